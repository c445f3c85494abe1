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

{{/* The client certificate Secret, checked: TLS on needs one. */}}
{{- define "sipreg.etcd.clientSecret" -}}
{{- if .Values.etcd.tls.enabled }}
{{- required "etcd.tls.clientSecret: name the Secret (ca.crt, tls.crt, tls.key) of sipreg's etcd client certificate" .Values.etcd.tls.clientSecret }}
{{- end }}
{{- end }}

{{- define "sipreg.etcd.tlsMount" -}}
/etc/sipreg/etcd-tls
{{- end }}
