"""The Kubernetes operator: pure reconcile and builders; handlers.py is the only kopf import."""
