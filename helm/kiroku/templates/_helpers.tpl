{{/*
Shared helpers. Every role (gateway, worker, account, audit, storage) is the same image
running `kiroku serve <role>`; the role templates pass a context
(dict "root" $ "role" "<role>") to the helpers below.
*/}}

{{- define "kiroku.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiroku.fullname" -}}
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

{{/* Name of one role's objects: <fullname>-<role>. */}}
{{- define "kiroku.componentName" -}}
{{- printf "%s-%s" (include "kiroku.fullname" .root | trunc 50 | trimSuffix "-") .role }}
{{- end }}

{{- define "kiroku.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object (root context). */}}
{{- define "kiroku.labels" -}}
helm.sh/chart: {{ include "kiroku.chart" . }}
app.kubernetes.io/name: {{ include "kiroku.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kiroku
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one role (role context). */}}
{{- define "kiroku.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiroku.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/* All labels of one role's objects (role context). */}}
{{- define "kiroku.componentLabels" -}}
{{ include "kiroku.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "kiroku.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiroku.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of a role; GPU workers get the CUDA build (role context). */}}
{{- define "kiroku.image" -}}
{{- $image := .root.Values.image }}
{{- $tag := default .root.Chart.AppVersion $image.tag }}
{{- if and (eq .role "worker") .root.Values.worker.gpu.enabled }}
{{- $tag = printf "%s%s" $tag $image.cudaTagSuffix }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/* In-cluster URL of a role's gRPC port (role context). */}}
{{- define "kiroku.grpcUrl" -}}
{{- $values := index .root.Values .role }}
{{- printf "http://%s:%v" (include "kiroku.componentName" .) $values.ports.grpc }}
{{- end }}

{{/* An env entry from an existing Secret, or nothing when its name is empty.
     (dict "env" "KIROKU_X" "ref" .Values.secrets.x) */}}
{{- define "kiroku.secretEnv" -}}
{{- if .ref.name }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name }}
      key: {{ .ref.key }}
{{- end }}
{{- end }}

{{/* Settings every role reads (ConfigMap data, root context). */}}
{{- define "kiroku.commonConfig" -}}
KIROKU_CLUSTER: {{ .Values.cluster.root | quote }}
KIROKU_RESUME_WINDOW_S: {{ .Values.cluster.resumeWindowSeconds | quote }}
KIROKU_LOG_FORMAT: {{ .Values.telemetry.logFormat | quote }}
{{- with .Values.dataLocation }}
{{- range $target := list .region .natsRegion .databaseRegion }}
{{- if and $target (not (has $target $.Values.dataLocation.allowedRegions)) }}
{{- fail (printf "dataLocation: region %q is not in allowedRegions %v (every role would refuse to start)" $target $.Values.dataLocation.allowedRegions) }}
{{- end }}
{{- end }}
KIROKU_REGION: {{ .region | quote }}
KIROKU_ALLOWED_REGIONS: {{ join "," .allowedRegions | quote }}
{{- with .natsRegion }}
KIROKU_NATS_REGION: {{ . | quote }}
{{- end }}
{{- with .databaseRegion }}
KIROKU_DATABASE_REGION: {{ . | quote }}
{{- end }}
{{- end }}
{{- if not .Values.nats.urlSecret.name }}
KIROKU_NATS_URL: {{ .Values.nats.url | quote }}
{{- end }}
KIROKU_NATS_REPLICAS: {{ .Values.nats.jetstream.replicas | quote }}
{{- with .Values.telemetry.logLevel }}
RUST_LOG: {{ . | quote }}
{{- end }}
{{- with .Values.telemetry.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
HOME: /tmp
{{- end }}

{{/* One role's ConfigMap (role context; "config" holds the role's own keys). */}}
{{- define "kiroku.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "kiroku.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "kiroku.componentLabels" . | nindent 4 }}
data:
  {{- include "kiroku.commonConfig" .root | trim | nindent 2 }}
  {{- .config | trim | nindent 2 }}
{{- end }}

{{/* An httpGet probe on the admin port with the role's timings. */}}
{{- define "kiroku.probe" -}}
httpGet:
  path: {{ .path }}
  port: admin
{{- toYaml .timings | nindent 0 }}
{{- end }}

{{/*
One role's Deployment (role context) with:
  config      the role's ConfigMap data (for the checksum)
  env         extra env entries (secrets), YAML list text
  volumes     extra volumes, YAML list text
  mounts      extra volume mounts, YAML list text
  initContainers  YAML list text
  grpc        whether the role has a gRPC port
  replicas    false when an autoscaler owns the replica count
*/}}
{{- define "kiroku.deployment" -}}
{{- $root := .root }}
{{- $values := index $root.Values .role }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "kiroku.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kiroku.componentLabels" . | nindent 4 }}
spec:
  {{- if .replicas }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml $values.strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "kiroku.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kiroku.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/part-of: kiroku
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "kiroku.configMap" . | sha256sum }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "kiroku.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with .initContainers }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .role }}
          image: {{ include "kiroku.image" . }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ .role | quote }}]
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          ports:
            {{- if .grpc }}
            - name: grpc
              containerPort: {{ $values.ports.grpc }}
              protocol: TCP
            {{- end }}
            - name: admin
              containerPort: {{ $values.ports.admin }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "kiroku.componentName" . }}
          {{- $natsEnv := include "kiroku.secretEnv" (dict "env" "KIROKU_NATS_URL" "ref" $root.Values.nats.urlSecret) }}
          {{- $env := printf "%s\n%s" $natsEnv (default "" .env) | trim }}
          {{- if or $env $values.extraEnv }}
          env:
            {{- with $env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          startupProbe:
            {{- include "kiroku.probe" (dict "path" "/healthz" "timings" $values.probes.startup) | nindent 12 }}
          livenessProbe:
            {{- include "kiroku.probe" (dict "path" "/healthz" "timings" $values.probes.liveness) | nindent 12 }}
          readinessProbe:
            {{- include "kiroku.probe" (dict "path" "/readyz" "timings" $values.probes.readiness) | nindent 12 }}
          {{- with .preStopSleepSeconds }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ . | quote }}]
          {{- end }}
          resources:
            {{- toYaml (default $values.resources .resources) | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      topologySpreadConstraints:
        {{- if $values.topologySpreadConstraints }}
        {{- toYaml $values.topologySpreadConstraints | nindent 8 }}
        {{- else }}
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "kiroku.selectorLabels" . | nindent 14 }}
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "kiroku.selectorLabels" . | nindent 14 }}
        {{- end }}
{{- end }}

{{/* The internal Service of a role: gRPC (when it has one) and admin (role context). */}}
{{- define "kiroku.service" -}}
{{- $values := index .root.Values .role }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "kiroku.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "kiroku.componentLabels" . | nindent 4 }}
    kiroku.dev/metrics: "true"
spec:
  type: ClusterIP
  selector:
    {{- include "kiroku.selectorLabels" . | nindent 4 }}
  ports:
    {{- if .grpc }}
    - name: grpc
      port: {{ $values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- end }}
    - name: admin
      port: {{ $values.ports.admin }}
      targetPort: admin
      protocol: TCP
      appProtocol: http
{{- end }}

{{/* A role's PodDisruptionBudget (role context). */}}
{{- define "kiroku.pdb" -}}
{{- $values := index .root.Values .role }}
{{- if $values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "kiroku.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "kiroku.componentLabels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $values.pdb.minAvailable) }}
  minAvailable: {{ $values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ default 1 $values.pdb.maxUnavailable }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "kiroku.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
