{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. A release named like the chart (the usual
`helm install portcullis ...`) gives plain "portcullis", so the Service is
reachable as portcullis.<namespace>.svc.
*/}}
{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
*/}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: portcullis
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
ServiceAccount annotations: the free-form ones plus the keyless identity ones.
*/}}
{{- define "portcullis.serviceAccountAnnotations" -}}
{{- $a := deepCopy (default dict .Values.serviceAccount.annotations) }}
{{- with .Values.identity.aws.roleArn }}
{{- $_ := set $a "eks.amazonaws.com/role-arn" . }}
{{- end }}
{{- with .Values.identity.gcp.serviceAccount }}
{{- $_ := set $a "iam.gke.io/gcp-service-account" . }}
{{- end }}
{{- with .Values.identity.azure.clientId }}
{{- $_ := set $a "azure.workload.identity/client-id" . }}
{{- end }}
{{- with .Values.identity.azure.tenantId }}
{{- $_ := set $a "azure.workload.identity/tenant-id" . }}
{{- end }}
{{- if $a }}
{{- toYaml $a }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than the preStop pause plus the gateway's own
drain (`--shutdown-grace`), so the kubelet's SIGKILL never cuts a draining stream.
*/}}
{{- define "portcullis.terminationGracePeriodSeconds" -}}
{{- $grace := add (int .Values.shutdownGraceSeconds) (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace 15 }}
{{- else }}
{{- $t := int .Values.terminationGracePeriodSeconds }}
{{- if le $t $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than shutdownGraceSeconds + preStopSleepSeconds (%d): the kubelet would kill streams the gateway is still draining" $t $grace) }}
{{- end }}
{{- $t }}
{{- end }}
{{- end }}

{{/*
The (Cluster)Role rules for the namespaced objects the gateway watches.
*/}}
{{- define "portcullis.watchRules" -}}
# LlmProvider / LlmProxy / LlmBudget: watched through reflectors (list + watch, get on resync).
- apiGroups: ["portcullis.dev"]
  resources: ["llmproviders", "llmproxies", "llmbudgets"]
  verbs: ["get", "list", "watch"]
# Status conditions, written with server-side apply by the lease holder.
- apiGroups: ["portcullis.dev"]
  resources: ["llmproviders/status", "llmproxies/status", "llmbudgets/status"]
  verbs: ["get", "patch", "update"]
# Secrets named by LlmProvider auth.*.secretRef, LlmProxy clientAuth.apiKeys.secretRef and
# LlmBudget store.redis.urlSecretRef.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Events on LlmProvider / LlmProxy for failures (both Event APIs).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Labels a namespace needs for its pods to reach the data plane when the
NetworkPolicy is on.
*/}}
{{- define "portcullis.clientNamespaceLabels" -}}
{{- toYaml (default (dict "portcullis.dev/access" "true") .Values.networkPolicy.clientNamespaceLabels) }}
{{- end }}

{{/*
OTEL_RESOURCE_ATTRIBUTES entries from otel.resourceAttributes, each as ",key=value"
(keys in order).
*/}}
{{- define "portcullis.otelResourceAttributes" -}}
{{- range $k, $v := . }},{{ $k }}={{ $v }}{{- end }}
{{- end }}
