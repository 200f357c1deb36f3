"""The platform: the `lepton` command, the live stack, the model server, deployments, dvc.yaml stages."""
