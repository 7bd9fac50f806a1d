"""The same stack file as another engine's files: systemd units, Kubernetes manifests, a
Compose file (`stackvisor export FORMAT`). See `base` for what the formats share."""
