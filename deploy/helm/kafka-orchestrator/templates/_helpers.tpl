{{/* Names and labels shared by every resource of the chart. */}}

{{- define "orch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "orch.fullname" -}}
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

{{/* A component's resource name: <fullname>-<component>, within the 63 characters of a DNS label. */}}
{{- define "orch.component" -}}
{{- printf "%s-%s" (include "orch.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "orch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orch.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "orch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "orch.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kafka-orchestrator
{{- end }}

{{- define "orch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "orch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "orch.configName" -}}
{{- include "orch.component" (dict "root" . "component" "config") }}
{{- end }}

{{- define "orch.kafkaSecretName" -}}
{{- if .Values.kafka.secret.existingSecret }}
{{- .Values.kafka.secret.existingSecret }}
{{- else if .Values.kafka.secret.create }}
{{- include "orch.component" (dict "root" . "component" "kafka") }}
{{- end }}
{{- end }}

{{/* A librdkafka key (sasl.password) as the variable Settings reads it (ORCHESTRATOR_KAFKA__SASL_PASSWORD). */}}
{{- define "orch.kafkaEnvName" -}}
{{- printf "ORCHESTRATOR_KAFKA__%s" (. | replace "." "_" | replace "-" "_" | upper) }}
{{- end }}

{{/*
The configuration every engine container gets: the ConfigMap (app, bootstrap servers, partitions,
replication, non-secret librdkafka settings), then the Kafka Secret, then the caller's extras.
*/}}
{{- define "orch.envFrom" -}}
- configMapRef:
    name: {{ include "orch.configName" . }}
{{- with (include "orch.kafkaSecretName" .) }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "orch.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.kafka.configFile.secretName }}
- name: ORCHESTRATOR_KAFKA_CONFIG_FILE
  value: {{ printf "%s/%s" .Values.kafka.configFile.mountPath .Values.kafka.configFile.key | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Kafka files (properties file, TLS PEMs) and a writable /tmp: the root file system is read-only. */}}
{{- define "orch.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.configFile.secretName }}
- name: kafka-config-file
  mountPath: {{ .Values.kafka.configFile.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.secretName }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "orch.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.configFile.secretName }}
- name: kafka-config-file
  secret:
    secretName: {{ .Values.kafka.configFile.secretName }}
    items:
      - key: {{ .Values.kafka.configFile.key }}
        path: {{ .Values.kafka.configFile.key }}
{{- end }}
{{- if .Values.kafka.tls.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.secretName }}
{{- end }}
{{- end }}

{{- define "orch.metricsArgs" -}}
{{- if .Values.metrics.enabled -}}
- --metrics-port
- {{ .Values.metrics.port | quote }}
{{- end }}
{{- end }}

{{- define "orch.metricsPort" -}}
{{- if .Values.metrics.enabled -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* The task queue topic names, as orchestrator.topology.tasks_topic builds them from topics/engine.toml. */}}
{{- define "orch.taskTopics" -}}
{{- $app := .Values.app.name }}
{{- $queues := .Values.worker.queues | default .Values.app.queues }}
{{- range $queues }}
- {{ printf "%s.tasks.%s" $app . }}
{{- end }}
{{- end }}
