{{/*
Names. The StatefulSet name is at most 52 characters (the controller adds a
revision hash label to it), so pod names (= Raft node ids) stay valid.
*/}}
{{- define "raft-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "raft-sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "raft-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "raft-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raft-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The `helm test` pod's labels: not the release's pod labels, which the
StatefulSet, the PDB, the Services and the NetworkPolicy select.
*/}}
{{- define "raft-sidecar.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "raft-sidecar.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "raft-sidecar.labels" -}}
helm.sh/chart: {{ include "raft-sidecar.chart" . }}
{{ include "raft-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: raft-sidecar
{{- end -}}

{{- define "raft-sidecar.headlessServiceName" -}}
{{- printf "%s-headless" (include "raft-sidecar.fullname" .) -}}
{{- end -}}

{{- define "raft-sidecar.metricsServiceName" -}}
{{- printf "%s-metrics" (include "raft-sidecar.fullname" .) -}}
{{- end -}}

{{- define "raft-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "raft-sidecar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "raft-sidecar.ledgerSecretName" -}}
{{- if .Values.ledger.existingSecret -}}
{{- .Values.ledger.existingSecret -}}
{{- else -}}
{{- printf "%s-ledger" (include "raft-sidecar.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "raft-sidecar.ledgerSecretKey" -}}
{{- if .Values.ledger.existingSecret -}}
{{- .Values.ledger.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{- define "raft-sidecar.clusterId" -}}
{{- default (printf "%s.%s" .Release.Namespace (include "raft-sidecar.fullname" .)) .Values.sidecar.clusterId -}}
{{- end -}}

{{/*
The sidecar image; the worker's defaults to it field by field.
*/}}
{{- define "raft-sidecar.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
A worker with no repository of its own runs the sidecar's image (digest
included) unless it names a tag or digest; one with its own repository uses
only its own tag or digest.
*/}}
{{- define "raft-sidecar.workerImage" -}}
{{- $w := .Values.worker.image -}}
{{- if $w.digest -}}
{{- printf "%s@%s" (default .Values.image.repository $w.repository) $w.digest -}}
{{- else if $w.repository -}}
{{- printf "%s:%s" $w.repository (default (default .Chart.AppVersion .Values.image.tag) $w.tag) -}}
{{- else if $w.tag -}}
{{- printf "%s:%s" .Values.image.repository $w.tag -}}
{{- else -}}
{{- include "raft-sidecar.image" . -}}
{{- end -}}
{{- end -}}

{{/*
Peer address of pod i: <fullname>-<i>.<headless>.<namespace>.svc.<domain>:<peer port>.
*/}}
{{- define "raft-sidecar.peerHost" -}}
{{- $ctx := index . 0 -}}
{{- $i := index . 1 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "raft-sidecar.fullname" $ctx) (int $i) (include "raft-sidecar.headlessServiceName" $ctx) $ctx.Release.Namespace $ctx.Values.clusterDomain -}}
{{- end -}}

{{/*
--peers: every voter, node id = pod name, address = its stable DNS name under
the headless Service. Static: derived from replicaCount only.
*/}}
{{- define "raft-sidecar.peers" -}}
{{- $peers := list -}}
{{- $fullname := include "raft-sidecar.fullname" . -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $peers = append $peers (printf "%s-%d=%s:%d" $fullname $i (include "raft-sidecar.peerHost" (list $ $i)) (int $.Values.sidecar.ports.peer)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/*
Peer TLS of pod i: its Secret, and the identity name its certificate carries
(<pod name>.<cluster id>.raft-sidecar.internal; sidecar/transport/identity.py).
*/}}
{{- define "raft-sidecar.peerTlsSecret" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%d-%s" (include "raft-sidecar.fullname" $ctx) (int (index . 1)) $ctx.Values.tls.secretSuffix -}}
{{- end -}}

{{- define "raft-sidecar.peerIdentity" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%d.%s.raft-sidecar.internal" (include "raft-sidecar.fullname" $ctx) (int (index . 1)) (include "raft-sidecar.clusterId" $ctx) -}}
{{- end -}}

{{- define "raft-sidecar.listen" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s:%d" $ctx.Values.listenHost (int (index . 1)) -}}
{{- end -}}

{{/*
"true" when this Kubernetes version may ignore rollingUpdate.maxUnavailable of
a StatefulSet (the MaxUnavailableStatefulSet gate is off by default before 1.35).
*/}}
{{- define "raft-sidecar.updateGateMayBeOff" -}}
{{- and (eq .Values.updateStrategy.type "RollingUpdate") (semverCompare "<1.35.0-0" .Capabilities.KubeVersion.Version) -}}
{{- end -}}

{{/*
Cross-field checks the schema cannot express; each fails the render with
the fix in the message.
*/}}
{{- define "raft-sidecar.validate" -}}
{{- $n := int .Values.replicaCount -}}
{{- $quorum := add (div $n 2) 1 -}}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.podDisruptionBudget.maxUnavailable) (sub $n $quorum)) -}}
{{- fail (printf "podDisruptionBudget.maxUnavailable=%d would let evictions break quorum: %d replicas need %d up, so at most %d may be unavailable" (int .Values.podDisruptionBudget.maxUnavailable) $n $quorum (sub $n $quorum)) -}}
{{- end -}}
{{- $lease := .Values.sidecar.lease -}}
{{- $raft := .Values.sidecar.raft -}}
{{- $electionMs := mul (int $raft.tickMs) (int $raft.electionTimeoutTicks) -}}
{{- if lt (int $lease.ttlMinMs) (mul 2 $electionMs) -}}
{{- fail (printf "sidecar.lease.ttlMinMs=%d is below two election timeouts (2 x %d ms): a Raft leader change alone could outlast a lease" (int $lease.ttlMinMs) $electionMs) -}}
{{- end -}}
{{- if lt (int $raft.electionTimeoutTicks) (mul 5 (int $raft.heartbeatTicks)) -}}
{{- fail (printf "sidecar.raft.electionTimeoutTicks=%d is under 5 heartbeats (5 x heartbeatTicks=%d): a few late or lost heartbeats would start an election (etcd refuses the same)" (int $raft.electionTimeoutTicks) (int $raft.heartbeatTicks)) -}}
{{- end -}}
{{- if lt $electionMs 500 -}}
{{- fail (printf "the election timeout (sidecar.raft.tickMs x electionTimeoutTicks = %d ms) is under 500 ms: CPU throttling and pauses of real pods would make the Raft leader flap (docs/kubernetes.md, \"CPU and timing\")" $electionMs) -}}
{{- end -}}
{{- if gt (int $lease.ttlMinMs) (int $lease.ttlMaxMs) -}}
{{- fail "sidecar.lease.ttlMinMs must not exceed sidecar.lease.ttlMaxMs" -}}
{{- end -}}
{{- if or (lt (int .Values.worker.ttlMs) (int $lease.ttlMinMs)) (gt (int .Values.worker.ttlMs) (int $lease.ttlMaxMs)) -}}
{{- fail (printf "worker.ttlMs=%d is outside sidecar.lease [%d, %d]: the sidecar would refuse the worker's Campaign" (int .Values.worker.ttlMs) (int $lease.ttlMinMs) (int $lease.ttlMaxMs)) -}}
{{- end -}}
{{- if and (not .Values.tls.enabled) (not .Values.tls.insecurePlaintextPeers) -}}
{{- fail "tls.enabled=false makes peer traffic plaintext and unauthenticated: set tls.insecurePlaintextPeers=true as well if that is meant (docs/kubernetes.md, \"TLS between the sidecars\")" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.insecurePlaintextPeers -}}
{{- fail "tls.insecurePlaintextPeers=true goes only with tls.enabled=false" -}}
{{- end -}}
{{- $retention := .Values.persistence.retentionPolicy -}}
{{- if and (eq $retention.whenDeleted "Delete") (not $retention.acknowledgeDataLoss) -}}
{{- fail "persistence.retentionPolicy whenDeleted=Delete deletes every Raft data volume with the StatefulSet: committed grants are lost, and a re-created cluster starts its fencing tokens at 1 again, below the ledger's fences; set persistence.retentionPolicy.acknowledgeDataLoss=true if that is meant" -}}
{{- end -}}
{{- if and (not .Values.tls.enabled) (not .Values.networkPolicy.enabled) -}}
{{- fail "tls.enabled=false with networkPolicy.enabled=false leaves the peer port open and unauthenticated to every pod of the cluster: anyone could speak Raft; keep the NetworkPolicy (networkPolicy.enabled=true) or peer mTLS" -}}
{{- end -}}
{{- if .Values.zoneSpread.enabled -}}
{{- range .Values.topologySpreadConstraints -}}
{{- if eq (toString .topologyKey) "topology.kubernetes.io/zone" -}}
{{- fail "topologySpreadConstraints repeats topology.kubernetes.io/zone, which zoneSpread.enabled already spreads over: set zoneSpread.* instead, or zoneSpread.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if gt (int .Values.updateStrategy.partition) $n -}}
{{- fail (printf "updateStrategy.partition=%d is above replicaCount=%d: use replicaCount to stage an update with no pod changed" (int .Values.updateStrategy.partition) $n) -}}
{{- end -}}
{{- if and (not .Values.ledger.existingSecret) (not .Values.ledger.url) -}}
{{- fail "set ledger.existingSecret (a Secret with the PostgreSQL URL) or ledger.url" -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.sidecar.preStopSleepSeconds) 2) -}}
{{- fail (printf "terminationGracePeriodSeconds=%d leaves no time for the handover: it must exceed sidecar.preStopSleepSeconds (%d) + 2 s" (int .Values.terminationGracePeriodSeconds) (int .Values.sidecar.preStopSleepSeconds)) -}}
{{- end -}}
{{- end -}}

{{/*
The "restricted" Pod Security Standard, for both containers.
*/}}
{{- define "raft-sidecar.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
