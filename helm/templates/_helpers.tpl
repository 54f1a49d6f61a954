{{- define "pgws.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgws.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgws.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pgws.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pgws.selector" -}}
app.kubernetes.io/name: {{ include "pgws.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pgws.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "pgws.secretName" -}}
{{- .Values.secret.existingSecret | default (include "pgws.fullname" .) -}}
{{- end -}}

{{- define "pgws.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "pgws.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Settings every pod shares. */}}
{{- define "pgws.commonEnv" -}}
- name: PGWS_REDIS_URL
  value: {{ required "redis.url is required" .Values.redis.url | quote }}
- name: PGWS_REDIS_CLUSTER
  value: {{ .Values.redis.cluster | quote }}
- name: PGWS_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
- name: PGWS_LISTEN_CHANNEL
  value: {{ .Values.listenChannel | quote }}
- name: PGWS_ADMIN_HOST
  value: "*4"
- name: PGWS_LOG_FORMAT
  value: json
{{- end -}}
