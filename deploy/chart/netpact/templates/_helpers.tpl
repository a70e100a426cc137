{{/*
netpact.image: a container's image and pull policy. One value for the enforcer, the controller and
the admission webhook: they are the same netpact binary.
*/}}
{{- define "netpact.image" -}}
image: {{ required "image is required: set image to a netpact image the nodes can pull (kind/images.sh builds one), e.g. --set image=registry.example.org/netpact:v0.1.0" .Values.image | quote }}
imagePullPolicy: {{ .Values.imagePullPolicy }}
{{- end }}
