"""Deploy tools that run beside the gateway, not in it: the compose bootstrap that provisions ZITADEL.

The recipes (forward-auth/) and the Helm chart (helm/) in this folder are files, not code."""
