{{/*
The operator's RBAC rules: the same rules as flextrain/operator/rbac.py, which
tests/chart/test_rbac.py compares with the rendered chart. Framework rules (what kopf
itself needs) are commented apart from application rules (what FlexTrain's handlers do).
Not granted on purpose: delete on children (their ownerReferences let the garbage
collector remove them), list/watch on Secrets (the operator reads its own token Secret by
name), kopf's peering resources (one replica, standalone mode).
*/}}

{{/* Rules on cluster-scoped resources: always in a ClusterRole. */}}
{{- define "flextrain.clusterRules" -}}
# Framework (kopf): discover the FlexTrain CRDs and notice when they are (re)installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if not .Values.watch.clusterWide }}
# Framework (kopf): serving named namespaces, kopf lists and watches Namespaces to notice
# them come and go (without it, it retries the 403 for about a minute before starting).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
# Application: DeviceTiers place trainers and size `depth: auto`.
- apiGroups: ["flextrain.dev"]
  resources: ["devicetiers"]
  verbs: ["get", "list", "watch"]
# Application: DeviceTier status (matching Ready nodes, allocatable resources).
- apiGroups: ["flextrain.dev"]
  resources: ["devicetiers/status"]
  verbs: ["get", "patch"]
# Application: which DeviceTiers match Ready nodes, and their capacity (read only).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Rules on FlexTrainJobs and their children: a ClusterRole when watching cluster-wide,
else one Role per watched namespace. */}}
{{- define "flextrain.namespacedRules" -}}
# Application: the jobs; patch for kopf's finalizer and annotations, delete for
# ttlSecondsAfterFinished.
- apiGroups: ["flextrain.dev"]
  resources: ["flextrainjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Application: children name their job in ownerReferences with blockOwnerDeletion: true;
# the OwnerReferencesPermissionEnforcement admission plugin allows that only to those who
# may update the job's finalizers.
- apiGroups: ["flextrain.dev"]
  resources: ["flextrainjobs/finalizers"]
  verbs: ["update"]
# Application: job status (phase, round, accuracy, conditions).
- apiGroups: ["flextrain.dev"]
  resources: ["flextrainjobs/status"]
  verbs: ["get", "patch"]
# Application: the per-job token Secret, created once and read by name (never listed).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# Application: the aggregator's Service.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create"]
# Application: the aggregator Deployment; patch scales it (end of training, suspend).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Application: one Indexed Job per tier; patch sets spec.suspend.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Application: trainer pods that cannot be scheduled make the job Degraded (read only).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{ include "flextrain.eventRules" . }}
{{- end -}}

{{/* Events: the operator's own on FlexTrainJobs and kopf's (framework). */}}
{{- define "flextrain.eventRules" -}}
# Framework and application: Events on FlexTrainJobs (the operator's and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
