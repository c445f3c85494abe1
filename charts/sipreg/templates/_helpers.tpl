{{/* Names, labels and the etcd settings every template shares. */}}

{{- define "sipreg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name; short enough for "-etcd-headless" and StatefulSet pod names. */}}
{{- define "sipreg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sipreg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object, beside its selector labels (which carry name and instance). */}}
{{- define "sipreg.labels" -}}
helm.sh/chart: {{ include "sipreg.chart" . }}
app.kubernetes.io/part-of: sipreg
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sipreg.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sipreg.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sipreg.etcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sipreg.name" . }}-etcd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sipreg.operator.fullname" -}}
{{- include "sipreg.fullname" . }}-operator
{{- end }}

{{- define "sipreg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sipreg.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sipreg.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The bundled etcd runs unless etcd.endpoints names an existing one. */}}
{{- define "sipreg.etcd.bundled" -}}
{{- if not .Values.etcd.endpoints }}true{{ end }}
{{- end }}

{{- define "sipreg.etcd.fullname" -}}
{{- include "sipreg.fullname" . }}-etcd
{{- end }}

{{- define "sipreg.etcd.headless" -}}
{{- include "sipreg.etcd.fullname" . }}-headless
{{- end }}

{{- define "sipreg.etcd.scheme" -}}
{{- if .Values.etcd.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* A member's stable DNS name, through the headless Service: `include "sipreg.etcd.member" (list $ INDEX)`. */}}
{{- define "sipreg.etcd.member" -}}
{{- $root := index . 0 }}
{{- printf "%s-%d.%s.%s.svc" (include "sipreg.etcd.fullname" $root) (index . 1) (include "sipreg.etcd.headless" $root) $root.Release.Namespace }}
{{- end }}

{{/*
What SIPREG_ETCD says: the existing etcd, or every bundled member by name (the session fails
over between them by itself, with no Service in between to hide a dead member).
*/}}
{{- define "sipreg.etcd.url" -}}
{{- if .Values.etcd.endpoints }}
{{- if not (hasPrefix "etcd://" .Values.etcd.endpoints) }}
{{- fail (printf "etcd.endpoints: %q is not etcd://HOST:PORT[,HOST:PORT...]" .Values.etcd.endpoints) }}
{{- end }}
{{- .Values.etcd.endpoints }}
{{- else }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $members = append $members (printf "%s:2379" (include "sipreg.etcd.member" (list $ $i))) }}
{{- end }}
{{- printf "etcd://%s" (join "," $members) }}
{{- end }}
{{- end }}

{{/*
Who makes the bundled etcd's certificates: "cert-manager", "helm", or "" when nobody here does (TLS
off, an existing etcd, or Secrets of your own named in etcd.tls.clientSecret and serverSecret).
*/}}
{{- define "sipreg.etcd.certificateMaker" -}}
{{- $tls := .Values.etcd.tls }}
{{- if and $tls.enabled (include "sipreg.etcd.bundled" .) }}
{{- if and $tls.clientSecret $tls.serverSecret }}
{{- /* Yours: nobody here makes them. */}}
{{- else if or $tls.clientSecret $tls.serverSecret }}
{{- fail "etcd.tls.clientSecret and etcd.tls.serverSecret: name both Secrets (certificates of your own), or neither (the chart makes them)" }}
{{- else if eq $tls.certificates "auto" }}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" }}cert-manager{{ else }}helm{{ end }}
{{- else if has $tls.certificates (list "cert-manager" "helm") }}
{{- $tls.certificates }}
{{- else }}
{{- fail (printf "etcd.tls.certificates: %q is none of auto, cert-manager, helm" $tls.certificates) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secrets the chart makes (ca.crt, tls.crt, tls.key each): the CA, etcd's own, sipreg's client one. */}}
{{- define "sipreg.etcd.caSecretName" -}}
{{- include "sipreg.etcd.fullname" . }}-ca
{{- end }}

{{- define "sipreg.etcd.madeServerSecretName" -}}
{{- include "sipreg.etcd.fullname" . }}-server
{{- end }}

{{- define "sipreg.etcd.madeClientSecretName" -}}
{{- include "sipreg.etcd.fullname" . }}-client
{{- end }}

{{/* The client certificate Secret the operator mounts (and copies to each SipDomain's namespace); "" with TLS off. */}}
{{- define "sipreg.etcd.clientSecret" -}}
{{- if .Values.etcd.tls.enabled }}
{{- if include "sipreg.etcd.certificateMaker" . }}
{{- include "sipreg.etcd.madeClientSecretName" . }}
{{- else }}
{{- required "etcd.tls.clientSecret: name the Secret (ca.crt, tls.crt, tls.key) of sipreg's client certificate for the etcd in etcd.endpoints (or set etcd.tls.enabled=false for plain text)" .Values.etcd.tls.clientSecret }}
{{- end }}
{{- end }}
{{- end }}

{{/* The bundled etcd's own certificate Secret (client and peer traffic); "" with TLS off. */}}
{{- define "sipreg.etcd.serverSecret" -}}
{{- if and .Values.etcd.tls.enabled (include "sipreg.etcd.bundled" .) }}
{{- if include "sipreg.etcd.certificateMaker" . }}
{{- include "sipreg.etcd.madeServerSecretName" . }}
{{- else }}
{{- .Values.etcd.tls.serverSecret }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The names in the bundled etcd's certificate, as a list: every member (through the headless Service),
the client Service, and localhost for etcdctl in a member's pod. One list for cert-manager and Helm.
*/}}
{{- define "sipreg.etcd.serverNames" -}}
{{- $headless := printf "%s.%s.svc" (include "sipreg.etcd.headless" .) .Release.Namespace }}
{{- $client := include "sipreg.etcd.fullname" . }}
{{- toYaml (list (printf "*.%s" $headless) (printf "*.%s.cluster.local" $headless)
      (printf "%s.%s.svc" $client .Release.Namespace) (printf "%s.%s.svc.cluster.local" $client .Release.Namespace)
      "localhost") }}
{{- end }}

{{/* The existing Secret `name` in the release namespace, as `lookup` finds it (empty under `helm template`). */}}
{{- define "sipreg.existingSecret" -}}
{{- toYaml (lookup "v1" "Secret" .root.Release.Namespace .name) }}
{{- end }}

{{- define "sipreg.etcd.tlsMount" -}}
/etc/sipreg/etcd-tls
{{- end }}
