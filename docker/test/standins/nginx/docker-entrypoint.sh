#!/bin/sh
# The nginx image's entrypoint interface, minimally: NGINX_ENTRYPOINT_LOCAL_RESOLVERS
# exports the container's DNS servers as NGINX_LOCAL_RESOLVERS, and every
# /etc/nginx/templates/*.template is rendered with envsubst (defined variables only)
# into NGINX_ENVSUBST_OUTPUT_DIR.
set -eu
if [ -n "${NGINX_ENTRYPOINT_LOCAL_RESOLVERS:-}" ]; then
  NGINX_LOCAL_RESOLVERS=$(awk 'BEGIN{ORS=" "} $1=="nameserver" {print ($2 ~ ":") ? "["$2"]" : $2}' /etc/resolv.conf)
  export NGINX_LOCAL_RESOLVERS
fi
out="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
if [ -d /etc/nginx/templates ]; then
  mkdir -p "$out"
  # Only defined variables are substituted, so nginx's own $variables survive.
  # shellcheck disable=SC2016,SC2046 # literal ${NAME} patterns, one per variable name
  defined=$(printf '${%s} ' $(env | cut -d= -f1))
  for t in /etc/nginx/templates/*.template; do
    [ -f "$t" ] || continue
    target="$out/$(basename "$t" .template)"
    envsubst "$defined" < "$t" > "$target"
  done
fi
exec "$@"
