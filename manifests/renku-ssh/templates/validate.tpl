{{/*
Checks that span several values; values.schema.json checks each value on its own.
*/}}
{{- define "renku-ssh.validate" -}}
{{- $values := .Values }}
{{- if not $values.gateway.host }}
{{- fail "renku-ssh: gateway.host is required: set it to the public DNS name users connect to, for example --set gateway.host=ssh.renku.example.org" }}
{{- end }}
{{- if $values.userPreferences.url }}
{{- if and (not $values.identityProvider.issuer) (not $values.identityProvider.tokenEndpoint) }}
{{- fail "renku-ssh: userPreferences.url needs identityProvider.issuer or identityProvider.tokenEndpoint for the operator's access token" }}
{{- end }}
{{- if and $values.identityProvider.issuer $values.identityProvider.tokenEndpoint }}
{{- fail "renku-ssh: set only one of identityProvider.issuer and identityProvider.tokenEndpoint" }}
{{- end }}
{{- if not $values.identityProvider.clientSecret.existingSecret }}
{{- fail "renku-ssh: userPreferences.url needs identityProvider.clientSecret.existingSecret, a Secret with the operator's OAuth 2.0 client secret" }}
{{- end }}
{{- if not $values.identityProvider.operatorClientId }}
{{- fail "renku-ssh: userPreferences.url needs identityProvider.operatorClientId" }}
{{- end }}
{{- end }}
{{- if and $values.gateway.autoscaling.enabled (lt (int $values.gateway.autoscaling.maxReplicas) (int $values.gateway.autoscaling.minReplicas)) }}
{{- fail (printf "renku-ssh: gateway.autoscaling.maxReplicas (%v) is below minReplicas (%v)" $values.gateway.autoscaling.maxReplicas $values.gateway.autoscaling.minReplicas) }}
{{- end }}
{{- if and $values.operator.pdb.enabled (ge (int $values.operator.pdb.minAvailable) (int $values.operator.replicas)) }}
{{- fail (printf "renku-ssh: operator.pdb.minAvailable (%v) must be below operator.replicas (%v), or no node could ever be drained" $values.operator.pdb.minAvailable $values.operator.replicas) }}
{{- end }}
{{- $gatewayReplicas := ternary $values.gateway.autoscaling.minReplicas $values.gateway.replicas $values.gateway.autoscaling.enabled }}
{{- if and $values.gateway.pdb.enabled (ge (int $values.gateway.pdb.minAvailable) (int $gatewayReplicas)) }}
{{- fail (printf "renku-ssh: gateway.pdb.minAvailable (%v) must be below the gateway's replicas (%v), or no node could ever be drained" $values.gateway.pdb.minAvailable $gatewayReplicas) }}
{{- end }}
{{- end }}
