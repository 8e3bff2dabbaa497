module kiln.dev/scripts/kaniko-flags

go 1.26.8

require github.com/GoogleContainerTools/kaniko v1.24.0
