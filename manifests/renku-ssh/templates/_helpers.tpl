{{/*
Names, labels and images shared by the templates.
*/}}

{{- define "renku-ssh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: the release name, followed by the chart name unless the release
name already contains it. Cut to 40 characters so that suffixes such as
"-gateway-host-key" keep names within 63.
*/}}
{{- define "renku-ssh.fullname" -}}
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

{{- define "renku-ssh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "renku-ssh.operatorName" -}}
{{- printf "%s-operator" (include "renku-ssh.fullname" .) }}
{{- end }}

{{- define "renku-ssh.gatewayName" -}}
{{- printf "%s-gateway" (include "renku-ssh.fullname" .) }}
{{- end }}

{{/* Service in front of the webhook and the operator's admin port. */}}
{{- define "renku-ssh.webhookServiceName" -}}
{{- printf "%s-webhook" (include "renku-ssh.fullname" .) }}
{{- end }}

{{/* Cluster-scoped: the release name keeps two installations apart. */}}
{{- define "renku-ssh.webhookConfigurationName" -}}
{{- printf "%s-webhook" (include "renku-ssh.fullname" .) }}
{{- end }}

{{- define "renku-ssh.webhookEntryName" -}}
sidecar.ssh.renku.io
{{- end }}

{{- define "renku-ssh.webhookTlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "renku-ssh.fullname" .) }}
{{- end }}

{{/* The operator creates this Secret at run time; the chart never renders it. */}}
{{- define "renku-ssh.caSecretName" -}}
{{- printf "%s-gateway-ca" (include "renku-ssh.fullname" .) }}
{{- end }}

{{- define "renku-ssh.hostKeySecretName" -}}
{{- default (printf "%s-gateway-host-key" (include "renku-ssh.fullname" .)) .Values.gateway.hostKey.existingSecret }}
{{- end }}

{{- define "renku-ssh.leaseName" -}}
{{- include "renku-ssh.operatorName" . }}
{{- end }}

{{/* Labels of every object, completed by "renku-ssh.componentLabels". */}}
{{- define "renku-ssh.labels" -}}
helm.sh/chart: {{ include "renku-ssh.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: renku-ssh
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component. The name label equals the binary's name, which is also the
operator's default gateway pod selector.
Call with (dict "context" $ "component" "operator").
*/}}
{{- define "renku-ssh.selectorLabels" -}}
app.kubernetes.io/name: renku-ssh-{{ .component }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- end }}

{{- define "renku-ssh.componentLabels" -}}
{{ include "renku-ssh.labels" .context }}
{{ include "renku-ssh.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The gateway pods as `key=value,...`, the form of the operator's --gateway-pod-selector.
*/}}
{{- define "renku-ssh.gatewayPodSelector" -}}
{{- $labels := include "renku-ssh.selectorLabels" (dict "context" . "component" "gateway") | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
An image reference. Call with (dict "context" $ "image" .Values.images.operator).
*/}}
{{- define "renku-ssh.image" -}}
{{- $registry := .context.Values.images.registry }}
{{- $repository := .image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Pod-level security context of the operator and the gateway. */}}
{{- define "renku-ssh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "renku-ssh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Topology spread of one component. Call with (dict "context" $ "component" "gateway"
"values" .Values.gateway).
*/}}
{{- define "renku-ssh.topologySpread" -}}
{{- $constraints := list }}
{{- if .values.spreadAcrossNodes }}
{{- $selector := include "renku-ssh.selectorLabels" . | fromYaml }}
{{- $constraints = append $constraints (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" $selector)) }}
{{- end }}
{{- $constraints = concat $constraints .values.topologySpreadConstraints }}
{{- with $constraints -}}
topologySpreadConstraints:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The `kubernetes.io/metadata.name` selector of one namespace, for NetworkPolicy peers.
*/}}
{{- define "renku-ssh.namespaceSelector" -}}
namespaceSelector:
  matchLabels:
    kubernetes.io/metadata.name: {{ . }}
{{- end }}

{{/*
Egress rule to TCP ports, optionally limited to CIDRs. Call with
(dict "cidrs" list "ports" list).
*/}}
{{- define "renku-ssh.egressToCidrs" -}}
- ports:
  {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
  {{- end }}
  {{- with .cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
Egress rules every component needs: DNS and the API server.
*/}}
{{- define "renku-ssh.commonEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.to | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{ include "renku-ssh.egressToCidrs" (dict "cidrs" .Values.networkPolicy.apiServer.cidrs "ports" .Values.networkPolicy.apiServer.ports) }}
{{- end }}

{{/*
An Ed25519 key in the unencrypted OpenSSH private key format ("openssh-key-v1", as
`ssh-keygen -t ed25519 -N ''` writes it), built from Sprig's PKCS#8 key because the gateway
reads OpenSSH keys only. Returns YAML with `private` (the PEM text) and `public` (the
`authorized_keys` line).

The 32-byte seed is the tail of the 48-byte PKCS#8 DER. Templates cannot compute the public key
from the seed, so it is read from a self-signed certificate for the same key: it follows the
DER prefix of an Ed25519 SubjectPublicKeyInfo (30 2a 30 05 06 03 2b 65 70 03 21 00).

The comment is fixed, so every length field is a constant: the private section is
8 (two check integers) + 15 (key type) + 36 (public key) + 68 (seed and public key) +
21 (comment) = 148 bytes, padded with 01 02 03 04 to 152 (0x98), a multiple of the
8-byte block size of the "none" cipher.
*/}}
{{- define "renku-ssh.opensshEd25519" -}}
{{- $pkcs8 := genPrivateKey "ed25519" }}
{{- $der := regexReplaceAll "-----[A-Z ]+-----" $pkcs8 "" | nospace | b64dec }}
{{- $seed := substr 16 48 $der }}
{{- $cert := genSelfSignedCertWithKey "renku-ssh-gateway" nil nil 1 $pkcs8 }}
{{- $certDer := regexReplaceAll "-----[A-Z ]+-----" $cert.Cert "" | nospace | b64dec }}
{{- $public := index (splitList "\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00" $certDer) 1 | trunc 32 }}
{{- $comment := "renku-ssh-gateway" }}
{{- $publicBlob := printf "\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20%s" $public }}
{{- $check := randBytes 4 | b64dec }}
{{- $privateSection := printf "%s%s\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20%s\x00\x00\x00\x40%s%s\x00\x00\x00\x11%s\x01\x02\x03\x04" $check $check $public $seed $public $comment }}
{{- $body := printf "openssh-key-v1\x00\x00\x00\x00\x04none\x00\x00\x00\x04none\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x33%s\x00\x00\x00\x98%s" $publicBlob $privateSection | b64enc }}
{{- $lines := list "-----BEGIN OPENSSH PRIVATE KEY-----" }}
{{- $lines = concat $lines (regexFindAll ".{1,70}" $body -1) }}
{{- $lines = append $lines "-----END OPENSSH PRIVATE KEY-----" }}
{{- if or (ne (len $der) 48) (ne (len $public) 32) (ne (len $privateSection) 152) }}
{{- fail "renku-ssh: generating the gateway host key failed; set gateway.hostKey.existingSecret to a Secret made with ssh-keygen" }}
{{- end }}
private: {{ printf "%s\n" (join "\n" $lines) | quote }}
public: {{ printf "ssh-ed25519 %s %s" ($publicBlob | b64enc) $comment | quote }}
{{- end }}
