{{/*
The chart's helpers. "cks.account" checks one entry of .Values.accounts and its config (the TOML
is parsed with fromToml) and returns what the templates need, as JSON; every problem fails the
render with a message naming the account and the key.
*/}}

{{- define "cks.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every resource of the release. */}}
{{- define "cks.commonLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "cks.chart" . }}
{{- end }}

{{/* The selector of one account's pod: (dict "root" $ "name" <account name>). */}}
{{- define "cks.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
chatapp-kommo-sync/account: {{ .name }}
{{- end }}

{{/* Every label of one account's resources: (dict "root" $ "name" <account name>). */}}
{{- define "cks.labels" -}}
{{ include "cks.commonLabels" .root }}
chatapp-kommo-sync/account: {{ .name }}
{{- end }}

{{/* The image reference. */}}
{{- define "cks.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Where the chart puts things in the container. */}}
{{- define "cks.configDir" -}}/etc/chatapp-kommo-sync{{- end }}
{{- define "cks.credentialsDir" -}}/run/credentials/chatapp-kommo-sync{{- end }}
{{- define "cks.stateDir" -}}/var/lib/chatapp-kommo-sync{{- end }}
{{- define "cks.sharedLimitDir" -}}/run/chatapp-kommo-sync{{- end }}

{{/*
Checks one account and returns JSON: fullname, port, checksum, secretName, kommoRps.
Input: (dict "root" $ "account" <entry>).
*/}}
{{- define "cks.account" -}}
{{- $root := .root -}}
{{- $a := .account -}}
{{- $name := $a.name | toString -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "accounts: name %q is not a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)" $name) -}}
{{- end -}}
{{- $full := printf "%s-%s" $root.Release.Name $name -}}
{{- if gt (len $full) 63 -}}
{{- fail (printf "accounts[%s]: the resource name %q is %d characters; release name + '-' + account name must be at most 63" $name $full (len $full)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]" $full) -}}
{{- fail (printf "accounts[%s]: the resource name %q must start with a letter (it names a Service): use a release name that does" $name $full) -}}
{{- end -}}
{{- $hasSecrets := not (empty $a.secrets) -}}
{{- $hasExisting := not (empty $a.existingSecret) -}}
{{- if and $hasSecrets $hasExisting -}}
{{- fail (printf "accounts[%s]: give either secrets or existingSecret, not both" $name) -}}
{{- end -}}
{{- if not (or $hasSecrets $hasExisting) -}}
{{- fail (printf "accounts[%s]: give secrets (file name -> value) or existingSecret (the name of a Secret with those keys)" $name) -}}
{{- end -}}
{{- $cfg := fromToml ($a.config | toString) -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "accounts[%s].config is not valid TOML: %s" $name $cfg.Error) -}}
{{- end -}}
{{- $daemon := get $cfg "daemon" | default dict -}}
{{- if hasKey $daemon "state_path" -}}
{{- fail (printf "accounts[%s].config: remove [daemon] state_path: the chart mounts the account's volume at %s and the daemon's default state_path (%s/state.redb) lies on it" $name (include "cks.stateDir" $root) (include "cks.stateDir" $root)) -}}
{{- end -}}
{{- $listen := get $daemon "listen" | default "" | toString -}}
{{- if not $listen -}}
{{- fail (printf "accounts[%s].config: [daemon] listen is required: the liveness (/healthz) and readiness (/readyz) probes, the Service (webhooks, /metrics) use its port. Add listen = \"0.0.0.0:9187\" to the [daemon] table" $name) -}}
{{- end -}}
{{- if not (regexMatch "^(0\\.0\\.0\\.0|\\[::\\]):[0-9]{1,5}$" $listen) -}}
{{- fail (printf "accounts[%s].config: [daemon] listen = %q must be \"0.0.0.0:PORT\" or \"[::]:PORT\": the kubelet's probes and the Service reach the pod at its own address, not at 127.0.0.1" $name $listen) -}}
{{- end -}}
{{- $port := regexReplaceAll "^.*:([0-9]+)$" $listen "${1}" | atoi -}}
{{- if or (lt $port 1024) (gt $port 65535) -}}
{{- fail (printf "accounts[%s].config: [daemon] listen port %d must be 1024..65535 (the container runs as uid 10001 without capabilities)" $name $port) -}}
{{- end -}}
{{- $kommo := get $cfg "kommo" | default dict -}}
{{- $chatapp := get $cfg "chatapp" | default dict -}}
{{- $oauth := get $kommo "oauth" | default dict -}}
{{- $files := dict "kommo.token_file" (get $kommo "token_file") "kommo.oauth.client_secret_file" (get $oauth "client_secret_file") "kommo.oauth.refresh_token_file" (get $oauth "refresh_token_file") "chatapp.password_file" (get $chatapp "password_file") "daemon.webhook_token_file" (get $daemon "webhook_token_file") -}}
{{- range $key := keys $files | sortAlpha -}}
{{- $f := get $files $key -}}
{{- if $f -}}
{{- $f = $f | toString -}}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" $f) -}}
{{- fail (printf "accounts[%s].config: %s = %q must be a plain file name: the chart mounts the account's Secret at %s ($CREDENTIALS_DIRECTORY), one file per key" $name $key $f (include "cks.credentialsDir" $root)) -}}
{{- end -}}
{{- if and $hasSecrets (not (hasKey $a.secrets $f)) -}}
{{- fail (printf "accounts[%s].config: %s = %q, but secrets has no key %q (it has: %s)" $name $key $f $f (keys $a.secrets | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $shared := get $kommo "shared_limit" -}}
{{- if $shared -}}
{{- $dir := include "cks.sharedLimitDir" $root -}}
{{- if not $root.Values.kommoSharedLimit.hostPath -}}
{{- fail (printf "accounts[%s].config: [kommo.shared_limit] needs a file every instance behind one address shares: set kommoSharedLimit.hostPath (the chart then sets $CHATAPP_KOMMO_SYNC_SHARED_LIMIT at 7 a second), or remove the table" $name) -}}
{{- end -}}
{{- if not (hasPrefix (printf "%s/" $dir) (get $shared "path" | default "" | toString)) -}}
{{- fail (printf "accounts[%s].config: [kommo.shared_limit] path must lie in %s (kommoSharedLimit.hostPath is mounted there)" $name $dir) -}}
{{- end -}}
{{- end -}}
{{- $secretName := ternary $full ($a.existingSecret | toString) $hasSecrets -}}
{{- $checksum := sha256sum (printf "config:%s\nsecrets:%s\nexistingSecret:%s" $a.config (toJson ($a.secrets | default dict)) ($a.existingSecret | default "")) -}}
{{- dict "fullname" $full "port" $port "checksum" $checksum "secretName" $secretName "kommoRps" (get $kommo "requests_per_second" | default 6) | toJson -}}
{{- end }}

{{/* Fails on a repeated account name; renders nothing. */}}
{{- define "cks.checkAccounts" -}}
{{- $seen := dict -}}
{{- range .Values.accounts -}}
{{- if hasKey $seen (.name | toString) -}}
{{- fail (printf "accounts: the name %q appears twice (each account has its own state db and resources)" (.name | toString)) -}}
{{- end -}}
{{- $_ := set $seen (.name | toString) true -}}
{{- end -}}
{{- end }}
