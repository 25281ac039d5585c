{{/*
Base name of the release's objects: the release name when it already says "pgmcp", else
"<release>-pgmcp"; at most 52 characters so "-operator" and friends still fit in 63.
*/}}
{{- define "pgmcp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the operator's Deployment, Service, PodDisruptionBudget and leader Lease. */}}
{{- define "pgmcp.operator" -}}
{{- printf "%s-operator" (include "pgmcp.fullname" .) -}}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "pgmcp.serviceAccountName" -}}
{{- default (include "pgmcp.operator" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/*
Names of cluster-scoped objects (ClusterRole, ClusterRoleBinding) carry the release namespace, so
releases of the same name in two namespaces do not collide.
*/}}
{{- define "pgmcp.clusterName" -}}
{{- printf "%s-%s" (include "pgmcp.operator" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgmcp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "pgmcp.labels" -}}
{{ include "pgmcp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pgmcp
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pgmcp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pgmcp.serverImage" -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) -}}
{{- end -}}
