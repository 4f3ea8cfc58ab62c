"""Working with a running Ray cluster: submitting patchray jobs and following them
(:mod:`patchray.cluster.submit`)."""
