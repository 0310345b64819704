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

{{/* Whether the HeadCNI DaemonSet is rendered. */}}
{{- define "knit.headcniEnabled" -}}
{{- if or .Values.headcni.enabled .Values.config.headscale.url }}true{{ end -}}
{{- end -}}

{{/* The Secret holding the Headscale auth key: the user's, or the chart's. */}}
{{- define "knit.headscaleSecret" -}}
{{- default (printf "%s-headscale-auth" .Release.Name) .Values.config.headscale.existingSecret -}}
{{- end -}}

{{/* HeadCNI's network configuration, in the seed's shape, from `config`. */}}
{{- define "knit.headcniConfig" -}}
{{- $c := .Values.config -}}
{{- $ipam := dict "type" $c.ipam.type "subnet" $c.podCIDR -}}
{{- with $c.ipam.gateway }}{{ $_ := set $ipam "gateway" . }}{{ end -}}
{{- if eq $c.ipam.type "headcni-ipam" -}}
{{- $_ := set $ipam "allocation_strategy" $c.ipam.allocationStrategy -}}
{{- with $c.ipam.routes }}{{ $_ := set $ipam "routes" . }}{{ end -}}
{{- else -}}
{{- with $c.ipam.rangeStart }}{{ $_ := set $ipam "rangeStart" . }}{{ end -}}
{{- with $c.ipam.rangeEnd }}{{ $_ := set $ipam "rangeEnd" . }}{{ end -}}
{{- end -}}
{{- $conf := dict "cniVersion" "1.0.0" "name" .Values.headcni.networkName "type" "headcni" -}}
{{- with $c.headscale.url }}{{ $_ := set $conf "headscale_url" . }}{{ end -}}
{{- $_ := set $conf "tailscale_socket" $c.tailscale.socket -}}
{{- $_ := set $conf "pod_cidr" $c.podCIDR -}}
{{- with $c.serviceCIDR }}{{ $_ := set $conf "service_cidr" . }}{{ end -}}
{{- $_ := set $conf "ipam" $ipam -}}
{{- $dns := dict -}}
{{- with $c.dns.nameservers }}{{ $_ := set $dns "nameservers" . }}{{ end -}}
{{- with $c.dns.search }}{{ $_ := set $dns "search" . }}{{ end -}}
{{- with $c.dns.options }}{{ $_ := set $dns "options" . }}{{ end -}}
{{- if $dns }}{{ $_ := set $conf "dns" $dns }}{{ end -}}
{{- $_ := set $conf "mtu" (int $c.mtu) -}}
{{- $_ := set $conf "enable_ipv6" $c.enableIPv6 -}}
{{- $_ := set $conf "enable_network_policy" $c.enableNetworkPolicy -}}
{{- toPrettyJson $conf -}}
{{- end -}}
