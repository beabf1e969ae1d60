"""gymflow: reinforcement-learning experiments as Prefect pipelines, from one YAML spec."""

__version__ = "0.1.0"
