{{/* Names and labels. */}}
{{- define "zitadel-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zitadel-gateway.fullname" -}}
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

{{/* A name for a second object, e.g. "forward-auth": the fullname shortened so that the suffix fits 63. */}}
{{- define "zitadel-gateway.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "zitadel-gateway.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "zitadel-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zitadel-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "zitadel-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "zitadel-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Where the ConfigMap is mounted, and the config file the gateway reads. */}}
{{- define "zitadel-gateway.configDir" -}}/etc/zitadel-gateway{{- end -}}
{{- define "zitadel-gateway.keyFileDir" -}}/var/run/secrets/zitadel-gateway{{- end -}}

{{/* Replicas must share one cache: refuse what would give each replica (or worker) a cache of its own. */}}
{{- define "zitadel-gateway.checks" -}}
{{- $redisUrl := or .Values.cache.url .Values.cache.urlSecret.name -}}
{{- if eq .Values.cache.backend "memory" -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount is %d but cache.backend is memory: replicas must share one cache. Set cache.backend=redis and the Redis URL (cache.url, or cache.urlSecret.name and .key for a URL with a password)." (int .Values.replicaCount)) -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail "autoscaling.enabled runs several replicas but cache.backend is memory: replicas must share one cache. Set cache.backend=redis and the Redis URL (cache.url, or cache.urlSecret.name and .key)." -}}
{{- end -}}
{{- if gt (int .Values.workers) 1 -}}
{{- fail (printf "workers is %d but cache.backend is memory: workers must share one cache. Set cache.backend=redis and the Redis URL (cache.url, or cache.urlSecret.name and .key)." (int .Values.workers)) -}}
{{- end -}}
{{- else if not $redisUrl -}}
{{- fail "cache.backend is redis: set the Redis URL (cache.url, or cache.urlSecret.name and .key for a URL with a password)." -}}
{{- end -}}
{{- if and .Values.cache.url .Values.cache.urlSecret.name -}}
{{- fail "set either cache.url or cache.urlSecret.name, not both" -}}
{{- end -}}
{{- if not .Values.zitadel.existingSecret -}}
{{- fail "zitadel.existingSecret: the name of the Secret with the client id and secret (or key file) is required" -}}
{{- end -}}
{{- if and (not .Values.zitadel.keyFileKey) (not (and .Values.zitadel.clientIdKey .Values.zitadel.clientSecretKey)) -}}
{{- fail "zitadel: set clientIdKey and clientSecretKey (Basic), or keyFileKey (Private Key JWT)" -}}
{{- end -}}
{{- $ports := list (int .Values.ports.proxy) (int .Values.ports.admin) -}}
{{- if .Values.forwardAuth.enabled -}}{{- $ports = append $ports (int .Values.ports.forwardAuth) -}}{{- end -}}
{{- if ne (len $ports) (len (uniq $ports)) -}}
{{- fail "ports: the proxy, admin and forward-auth ports must differ" -}}
{{- end -}}
{{- if gt (add (int .Values.ports.admin) (int .Values.workers)) 65536 -}}
{{- fail "ports.admin: worker i listens on ports.admin + i; that passes 65535" -}}
{{- end -}}
{{- if and .Values.terminationGracePeriodSeconds (le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSeconds) (int .Values.shutdownGraceSeconds))) -}}
{{- fail "terminationGracePeriodSeconds must be longer than preStopSeconds + shutdownGraceSeconds, or a rolling update cuts requests off" -}}
{{- end -}}
{{- end -}}

{{- define "zitadel-gateway.terminationGracePeriodSeconds" -}}
{{- .Values.terminationGracePeriodSeconds | default (add (int .Values.preStopSeconds) (int .Values.shutdownGraceSeconds) 5) -}}
{{- end -}}

{{/* The gateway's config.yaml: what the chart owns, over `config`. No secret is ever in it. */}}
{{- define "zitadel-gateway.config" -}}
{{- $idp := dict "issuer" .Values.zitadel.domain -}}
{{- with .Values.zitadel.connectUrl }}{{- $_ := set $idp "connect_url" . -}}{{- end -}}
{{- with .Values.zitadel.projectId }}{{- $_ := set $idp "project_id" . -}}{{- end -}}
{{- $cache := dict "backend" .Values.cache.backend "ttl_seconds" .Values.cache.ttlSeconds "negative_ttl_seconds" .Values.cache.negativeTtlSeconds "max_entries" .Values.cache.maxEntries -}}
{{- if .Values.cache.urlSecret.name -}}
{{- $_ := set $cache "url" "${REDIS_URL}" -}}
{{- else if .Values.cache.url -}}
{{- $_ := set $cache "url" .Values.cache.url -}}
{{- end -}}
{{- $owned := dict
  "listen" (dict "host" .Values.bindAddress "port" .Values.ports.proxy)
  "admin" (dict "host" .Values.bindAddress "port" .Values.ports.admin)
  "cache" $cache
  "workers" .Values.workers
  "upstreams" .Values.upstreams
  "routes" .Values.routes
  "logging" (dict "level" .Values.logging.level "format" .Values.logging.format)
  "shutdown_grace_seconds" .Values.shutdownGraceSeconds
-}}
{{- if .Values.forwardAuth.enabled -}}
{{- $_ := set $owned "forward_auth" (dict "host" .Values.bindAddress "port" .Values.ports.forwardAuth "original" .Values.forwardAuth.original) -}}
{{- end -}}
{{- $extra := deepCopy (default (dict) .Values.config) -}}
{{- $_ := set $owned "idp" (merge $idp (default (dict) $extra.idp)) -}}
{{- $_ := unset $extra "idp" -}}
{{- toYaml (merge $owned $extra) -}}
{{- end -}}
