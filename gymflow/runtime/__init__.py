"""The worker: builds envs and algorithms from a spec, trains, evaluates, checkpoints, resumes."""
