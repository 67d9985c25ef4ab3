{{/* Object name prefix: fullnameOverride, else the release name. */}}
{{- define "weir.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object (selectors use only app.kubernetes.io/name and instance). */}}
{{- define "weir.labels" -}}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "weir.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* true when the chart runs its own etcd. */}}
{{- define "weir.etcdInChart" -}}
{{- if not .Values.etcd.external.endpoints -}}true{{- end -}}
{{- end -}}

{{/* etcd client URLs, comma-separated (the gateway, the engines, weirctl, backups). */}}
{{- define "weir.etcdEndpoints" -}}
{{- if include "weir.etcdInChart" . -}}
{{- $name := include "weir.fullname" . -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-etcd-%d.%s-etcd:2379" $scheme $name $i $name) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security profile, for a container. */}}
{{- define "weir.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Prometheus as a NetworkPolicy peer. */}}
{{- define "weir.prometheusPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.prometheus.namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .Values.prometheus.podLabels | nindent 6 }}
{{- end -}}

{{/* etcdctl's connection settings (environment) for TLS, when on. */}}
{{- define "weir.etcdctlTlsEnv" -}}
{{- if .Values.etcd.tls.enabled }}
- name: ETCDCTL_CACERT
  value: /etc/etcd/tls/ca.crt
{{- if .Values.etcd.tls.clientCertificate }}
- name: ETCDCTL_CERT
  value: /etc/etcd/tls/tls.crt
- name: ETCDCTL_KEY
  value: /etc/etcd/tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "weir.etcdTlsMount" -}}
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/etcd/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "weir.etcdTlsVolume" -}}
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.existingSecret }}
{{- end }}
{{- end -}}

{{- define "weir.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
