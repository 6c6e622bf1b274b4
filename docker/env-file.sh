# Sourced by deploy.sh and vault/init.sh (from docker/): reading and writing .env.
# shellcheck shell=bash

env_get() { # env_get NAME: the value of NAME in .env (last one wins), quotes removed
  [ -f .env ] || return 0
  sed -n "s/^$1=//p" .env | tail -n1 | sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"
}
env_set() { # env_set NAME VALUE: replaces NAME's line in .env, or appends one
  local tmp; tmp=$(mktemp .env.XXXXXX)
  if grep -q "^$1=" .env; then
    awk -v k="$1" -v v="$2" 'BEGIN{FS=OFS="="} $1==k {print k "=" v; next} {print}' .env > "$tmp"
  else
    cat .env > "$tmp"
    # A hand-edited .env may lack its last newline: the new line must not join it.
    if [ -s .env ] && [ -n "$(tail -c1 .env)" ]; then echo >> "$tmp"; fi
    printf '%s=%s\n' "$1" "$2" >> "$tmp"
  fi
  chmod 600 "$tmp"; mv "$tmp" .env
}
