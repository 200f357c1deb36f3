-- Run once by the postgres image, on an empty data volume. The image itself creates
-- POSTGRES_DB (`mlflow`, MLflow's backend store); Prefect's server gets its own database.
CREATE DATABASE prefect;
