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

{{/* Whether the release is standalone (gateways only, no Redis). */}}
{{- define "pgws.standalone" -}}
{{- if eq .Values.mode "standalone" }}true{{ end -}}
{{- end -}}

{{/* The pod annotation that rolls pods when the Secret changes. With
     secret.existingSecret the Secret is read with `lookup` at install and
     upgrade time (a `helm upgrade` after rotating it rolls the pods; helm
     template and --dry-run see no cluster, so the checksum is of nothing). */}}
{{- define "pgws.secretChecksum" -}}
{{- if .Values.secret.existingSecret -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.secret.existingSecret | default dict -}}
{{- get $secret "data" | default dict | toJson | sha256sum -}}
{{- else -}}
{{- include (print .Template.BasePath "/secret.yaml") . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* Settings every pod shares. */}}
{{- define "pgws.commonEnv" -}}
- name: PGWS_LISTEN_CHANNEL
  value: {{ .Values.listenChannel | quote }}
- name: PGWS_ADMIN_HOST
  value: "*4"
- name: PGWS_LOG_FORMAT
  value: json
{{- if not (include "pgws.standalone" .) }}
{{- include "pgws.redisEnv" . }}
{{- end }}
{{- end -}}

{{/* The Redis of cluster mode. */}}
{{- define "pgws.redisEnv" -}}
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

{{/* The database, for coordinators and standalone gateways. */}}
{{- define "pgws.dbEnv" -}}
- name: PGWS_DB_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "pgws.secretName" . }}
      key: {{ .Values.secret.keys.dbUri }}
{{- with .Values.database.sslmode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.database.tls }}
{{- if or .secretName .configMapName }}
{{- if .caKey }}
- name: PGSSLROOTCERT
  value: /etc/pgws/db-tls/{{ .caKey }}
{{- end }}
{{- if and .certKey .keyKey }}
- name: PGSSLCERT
  value: /etc/pgws/db-tls/{{ .certKey }}
- name: PGSSLKEY
  value: /etc/pgws/db-tls/{{ .keyKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A component's env map and extraEnv list: (dict "root" . "c" .Values.gateway). */}}
{{- define "pgws.extraEnv" -}}
{{- range $name, $value := .c.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounts and volumes of a pod: (dict "root" . "c" component "redis" bool "db" bool). */}}
{{- define "pgws.volumeMounts" -}}
{{- if .redis }}
- name: redis-tls
  mountPath: /etc/pgws/redis-tls
  readOnly: true
{{- end }}
{{- if .db }}
- name: db-tls
  mountPath: /etc/pgws/db-tls
  readOnly: true
{{- end }}
{{- with .c.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "pgws.volumes" -}}
{{- if .redis }}
{{- include "pgws.tlsVolume" (dict "name" "redis-tls" "tls" .root.Values.redis.tls) }}
{{- end }}
{{- if .db }}
{{- include "pgws.tlsVolume" (dict "name" "db-tls" "tls" .root.Values.database.tls) }}
{{- end }}
{{- with .c.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling shared by both components: (dict "root" . "c" component "component" name). */}}
{{- define "pgws.scheduling" -}}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
  {{- if .c.affinity }}
  {{- toYaml .c.affinity | nindent 2 }}
  {{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "pgws.selector" (dict "root" .root "component" .component) | nindent 14 }}
  {{- end }}
{{- end -}}
