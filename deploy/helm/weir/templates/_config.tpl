{{/* The gateway's weir.toml (README.md, "Configuration reference"). */}}
{{- define "weir.gatewayConfig" -}}
{{- $gw := .Values.gateway -}}
# weir's bootstrap config (ConfigMap {{ include "weir.fullname" . }}-gateway-config): pools, routes
# and timeouts come from etcd (--etcd); live changes go through weirctl.
[server]
proxy = "0.0.0.0:{{ $gw.ports.proxy }}"
admin = "0.0.0.0:{{ $gw.ports.admin }}"
threads = {{ $gw.server.threads }}
grace_period_seconds = {{ $gw.server.gracePeriodSeconds }}
access_log = {{ $gw.server.accessLog }}
{{- if $gw.adminToken.enabled }}
# The admin API (all but /healthz and /readyz) needs the bearer token whose
# digest the Secret {{ $gw.adminToken.existingSecret }} holds (read at start).
admin_token_sha256 = "${file:/etc/weir/admin/token.sha256}"
{{- end }}
{{- if .Values.etcd.tls.enabled }}

# TLS to etcd, with the CA (and client certificate) of the Secret
# {{ .Values.etcd.tls.existingSecret }}; --etcd names the same endpoints.
[source.etcd]
endpoints = [{{ range $i, $u := splitList "," (include "weir.etcdEndpoints" .) }}{{ if $i }}, {{ end }}{{ $u | quote }}{{ end }}]
{{- if .Values.etcd.tls.clientCertificate }}
tls = { ca = "/etc/etcd/tls/ca.crt", cert = "/etc/etcd/tls/tls.crt", key = "/etc/etcd/tls/tls.key" }
{{- else }}
tls = { ca = "/etc/etcd/tls/ca.crt" }
{{- end }}
{{- end }}
{{- if or .Values.redis.enabled .Values.redis.url }}

# Request rates and tokens per minute shared by every replica.
[limits]
redis = {{ .Values.redis.url | default (printf "redis://%s-redis:6379" (include "weir.fullname" .)) | quote }}
redis_timeout_ms = {{ .Values.redis.timeoutMs }}
{{- end }}
{{- end -}}

{{/* The config the import Job seeds etcd with: one pool per engine, one route. */}}
{{- define "weir.routesConfig" -}}
# What the Job {{ include "weir.fullname" . }}-config-import writes to etcd when etcd holds no
# config yet. Engines register themselves in their pools.

[timeouts]
connect_ms = {{ .Values.route.timeouts.connectMs }}
read_ms = {{ .Values.route.timeouts.readMs }}
write_ms = {{ .Values.route.timeouts.writeMs }}
{{- range .Values.engines }}

[[pools]]
name = "engine-{{ .version }}"
protocol = "http1"
registered = true
backends = []
health_check = { kind = "http", path = "/v2/health/ready", interval_ms = 2000, timeout_ms = 1000, unhealthy_threshold = 3, healthy_threshold = 2 }
{{- end }}

[[routes]]
name = {{ .Values.route.name | quote }}
prefix = {{ .Values.route.prefix | quote }}
ab_header = {{ .Values.route.abHeader | quote }}
{{- with .Values.route.stickyHeader }}
sticky_header = {{ . | quote }}
{{- end }}
{{- with .Values.route.fallback }}
fallback = {{ . | quote }}
{{- end }}
arms = [
{{- range .Values.engines }}
  { name = "{{ .version }}", pool = "engine-{{ .version }}", weight = {{ .weight }} },
{{- end }}
]
{{- end -}}
