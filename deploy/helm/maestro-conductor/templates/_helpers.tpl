{{/* Chart name, overridable. */}}
{{- define "mc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; components append "-<component>". */}}
{{- define "mc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects. Args: dict "root" $ "name" <component>. */}}
{{- define "mc.componentName" -}}
{{- printf "%s-%s" (include "mc.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component. Args: dict "root" $ "name" <component>. */}}
{{- define "mc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* All labels of one component. Args: dict "root" $ "name" <component>. */}}
{{- define "mc.labels" -}}
helm.sh/chart: {{ include "mc.chart" .root }}
{{ include "mc.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: maestro-conductor
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "mc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
