{{- define "knit.name" -}}knit{{- end -}}

{{- define "knit.labels" -}}
app.kubernetes.io/name: knit
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "knit.selectorLabels" -}}
app.kubernetes.io/name: knit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Secret holding the TKE API key: the user's, or the chart's. */}}
{{- define "knit.tkeSecret" -}}
{{- default (printf "%s-tke-credentials" .Release.Name) .Values.tke.existingSecret -}}
{{- end -}}

{{- define "knit.domains" -}}
{{- $domains := list -}}
{{- if .Values.domains.ipam }}{{ $domains = append $domains "ipam" }}{{ end -}}
{{- if .Values.domains.tkeClb }}{{ $domains = append $domains "tke-clb" }}{{ end -}}
{{- if .Values.domains.cloudflare }}{{ $domains = append $domains "cloudflare" }}{{ end -}}
{{- join "," $domains -}}
{{- end -}}

{{/* The Secret holding the default Cloudflare API token: the user's, or the chart's. */}}
{{- define "knit.cloudflareSecret" -}}
{{- default (printf "%s-cloudflare-credentials" .Release.Name) .Values.cloudflare.existingSecret -}}
{{- end -}}
