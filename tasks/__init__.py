"""One Prefect task per phase of a trial."""
