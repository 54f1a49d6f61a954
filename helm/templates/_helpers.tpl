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
{{- if .Values.redis.urlFromSecret }}
- name: PGWS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pgws.secretName" . }}
      key: {{ .Values.secret.keys.redisUrl }}
{{- else }}
- name: PGWS_REDIS_URL
  value: {{ required "redis.url is required (or set redis.urlFromSecret)" .Values.redis.url | quote }}
{{- end }}
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
{{- with .Values.redis.tls }}
{{- if or .secretName .configMapName }}
{{- if .caKey }}
- name: PGWS_REDIS_CA_FILE
  value: /etc/pgws/redis-tls/{{ .caKey }}
{{- end }}
{{- if and .certKey .keyKey }}
- name: PGWS_REDIS_CERT_FILE
  value: /etc/pgws/redis-tls/{{ .certKey }}
- name: PGWS_REDIS_KEY_FILE
  value: /etc/pgws/redis-tls/{{ .keyKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A volume of TLS files from a Secret or a ConfigMap: (dict "name" … "tls" …). */}}
{{- define "pgws.tlsVolume" -}}
{{- if .tls.secretName }}
- name: {{ .name }}
  secret:
    secretName: {{ .tls.secretName }}
    defaultMode: 0440
{{- else if .tls.configMapName }}
- name: {{ .name }}
  configMap:
    name: {{ .tls.configMapName }}
{{- end }}
{{- end -}}

{{/* Whether a TLS value names a source. */}}
{{- define "pgws.hasTls" -}}
{{- if or .secretName .configMapName }}true{{ end -}}
{{- end -}}
