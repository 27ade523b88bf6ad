{{/*
Names, labels and image references shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "flextrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the operator's resources: <release>-flextrain, or the release name
when it already contains the chart name, or fullnameOverride. */}}
{{- define "flextrain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "flextrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of the CRDs: the generated YAML already carries app.kubernetes.io/part-of. */}}
{{- define "flextrain.crdLabels" -}}
helm.sh/chart: {{ include "flextrain.chart" . }}
app.kubernetes.io/name: {{ include "flextrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "flextrain.labels" -}}
{{ include "flextrain.crdLabels" . }}
app.kubernetes.io/part-of: flextrain
{{- end }}

{{/* Labels the operator Deployment selects its pod by (immutable: never change them). */}}
{{- define "flextrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flextrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "flextrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flextrain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces served when not cluster-wide (default: the release namespace). */}}
{{- define "flextrain.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- join "," (uniq .Values.watch.namespaces) }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The operator image: registry/repository:tag (tag defaults to appVersion) or @digest. */}}
{{- define "flextrain.operatorImage" -}}
{{- $img := .Values.image }}
{{- $repo := ternary $img.repository (printf "%s/%s" $img.registry $img.repository) (empty $img.registry) }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* A trainer image variant: include "flextrain.trainerImage" (list . "cpu"). */}}
{{- define "flextrain.trainerImage" -}}
{{- $root := index . 0 }}
{{- $variant := index . 1 }}
{{- $img := $root.Values.trainerImage }}
{{- $repo := ternary $img.repository (printf "%s/%s" $img.registry $img.repository) (empty $img.registry) }}
{{- $tag := default $root.Chart.AppVersion $img.tag }}
{{- if $variant }}
{{- printf "%s:%s-%s" $repo $tag $variant }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/* The image prefixes of the tenancy policy, as a JSON list: policy.allowedImages, else
the trainer image repository with any tag or digest (as flextrain.operator.policy). */}}
{{- define "flextrain.allowedImages" -}}
{{- if .Values.policy.allowedImages }}
{{- toJson .Values.policy.allowedImages }}
{{- else }}
{{- $img := .Values.trainerImage }}
{{- $repo := ternary $img.repository (printf "%s/%s" $img.registry $img.repository) (empty $img.registry) }}
{{- toJson (list (printf "%s:" $repo) (printf "%s@" $repo)) }}
{{- end }}
{{- end }}

{{/* The hostPath prefixes of the tenancy policy without a trailing slash ("/" stays), as JSON. */}}
{{- define "flextrain.hostPathPrefixes" -}}
{{- $out := list }}
{{- range .Values.policy.hostPathPrefixes }}
{{- $out = append $out (default "/" (trimSuffix "/" .)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The operator pod's selector labels as `key=value,...` (FLEXTRAIN_OPERATOR_SELF_LABELS). */}}
{{- define "flextrain.selectorLabelList" -}}
{{- $pairs := list }}
{{- range $k, $v := (include "flextrain.selectorLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
