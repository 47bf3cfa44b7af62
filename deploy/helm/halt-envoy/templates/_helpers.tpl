{{/* The name of every object: the release name, with -halt-envoy unless it has it. */}}
{{- define "halt-envoy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels that select this release's pods. */}}
{{- define "halt-envoy.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every object's labels. */}}
{{- define "halt-envoy.labels" -}}
{{ include "halt-envoy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: rate-limit
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Secret holding the store URL, and its key. */}}
{{- define "halt-envoy.storeSecret" -}}
{{- .Values.store.existingSecret | default (printf "%s-store" (include "halt-envoy.fullname" .)) -}}
{{- end -}}

{{/* The Secret holding the admin token ("" when the admin API is off). */}}
{{- define "halt-envoy.adminSecret" -}}
{{- if .Values.adminToken.existingSecret -}}
{{- .Values.adminToken.existingSecret -}}
{{- else if .Values.adminToken.value -}}
{{- printf "%s-admin" (include "halt-envoy.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the rate-limit configuration. */}}
{{- define "halt-envoy.configMap" -}}
{{- .Values.config.existingConfigMap | default (printf "%s-config" (include "halt-envoy.fullname" .)) -}}
{{- end -}}
