"""The Kubernetes backend: a locked-down namespace and a restricted pod per kernel."""
