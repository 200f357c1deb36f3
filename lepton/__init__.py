"""The platform: the `lepton` command, the live stack (`lepton up/down`), deployments, the dvc.yaml stage entry points."""
