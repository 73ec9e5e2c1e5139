{{/*
Labels on every object of the release.
*/}}
{{- define "filament.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: filament
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: filament
{{- end }}

{{/*
Selector labels of one component: include with (dict "root" $ "component" "agent").
*/}}
{{- define "filament.selectorLabels" -}}
app.kubernetes.io/name: filament
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "filament.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The etcd endpoints the agents use, comma-separated: kvstore.etcd.endpoints,
else this chart's clustermesh-apiserver at its fixed cluster IP (the address
its certificate names).
*/}}
{{- define "filament.kvstoreEndpoints" -}}
{{- $api := .Values.clustermeshApiserver -}}
{{- if .Values.kvstore.etcd.endpoints -}}
{{ join "," .Values.kvstore.etcd.endpoints }}
{{- else if not $api.enabled -}}
{{ fail "kvstore.etcd.endpoints is empty and clustermeshApiserver.enabled is false: the agents need a shared etcd" }}
{{- else if not $api.service.clusterIP -}}
{{ fail "clustermeshApiserver.service.clusterIP is empty: set it (the agents dial that address, which the bundle's certificate must name) or set kvstore.etcd.endpoints" }}
{{- else -}}
{{ ternary "https" "http" (ne $api.bundleSecretName "") }}://{{ $api.service.clusterIP }}:{{ $api.service.port }}
{{- end -}}
{{- end }}

{{/*
The Secret with the agents' etcd client certificate: kvstore.etcd.secretName,
else the bundle Secret when the agents use this chart's apiserver; empty: no
TLS.
*/}}
{{- define "filament.kvstoreSecret" -}}
{{- if .Values.kvstore.etcd.secretName -}}
{{ .Values.kvstore.etcd.secretName }}
{{- else if and (not .Values.kvstore.etcd.endpoints) .Values.clustermeshApiserver.enabled -}}
{{ .Values.clustermeshApiserver.bundleSecretName }}
{{- end -}}
{{- end }}

{{/*
agent.kubernetes.apiServerHost:apiServerPort as host:port (an IPv6 address
bracketed), the agent's --k8s-api-server.
*/}}
{{- define "filament.apiServer" -}}
{{- $k := .Values.agent.kubernetes -}}
{{- if contains ":" $k.apiServerHost -}}
[{{ $k.apiServerHost }}]:{{ $k.apiServerPort }}
{{- else -}}
{{ $k.apiServerHost }}:{{ $k.apiServerPort }}
{{- end -}}
{{- end }}

{{/* The uninstall containers' security context: the agent's, as it undoes the agent's work. */}}
{{- define "filament.uninstallSecurity" -}}
{{- if .Values.agent.privileged -}}
privileged: true
{{- else -}}
privileged: false
capabilities:
  drop: [ALL]
  add: [NET_ADMIN, SYS_ADMIN, BPF, NET_RAW]
# The runtime's default AppArmor profile forbids deleting under /sys/fs
# (the pins), as it forbids the agent's writes there.
appArmorProfile:
  type: Unconfined
{{- end }}
{{- end }}

{{/* The uninstall containers' mounts: the node paths uninstall cleans. */}}
{{- define "filament.uninstallMounts" -}}
- name: bpf-maps
  mountPath: /sys/fs/bpf
  mountPropagation: HostToContainer
- name: state
  mountPath: /var/lib/filament
- name: run
  mountPath: /var/run/filament
- name: cni-bin
  mountPath: /host/cni-bin
- name: cni-conf
  mountPath: /host/cni-conf
{{- end }}
