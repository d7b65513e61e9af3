{{/*
Name of the operator's objects. The chart name, not the release name: the operator is one per
cluster and its cluster-scoped objects (ClusterRole, ClusterRoleBinding) must keep one name.
*/}}
{{- define "sectordb-operator.fullname" -}}
{{- default .Chart.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sectordb-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sectordb-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sectordb-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sectordb-operator.leaseName" -}}
{{- default (include "sectordb-operator.fullname" .) .Values.operator.leaseName -}}
{{- end -}}

{{- define "sectordb-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "sectordb-operator.labels" -}}
helm.sh/chart: {{ include "sectordb-operator.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sectordb
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the operator's own workload objects (adds the component). */}}
{{- define "sectordb-operator.operatorLabels" -}}
{{ include "sectordb-operator.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Selector labels: stable across upgrades, so never the version. */}}
{{- define "sectordb-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
