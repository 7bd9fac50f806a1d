"""stackvisor: run a whole development or CI stack from one YAML file."""

__version__ = "0.1.0"
