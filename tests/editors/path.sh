# Sourced by the editor tests: takes every directory holding a `ghostline` out of PATH, so that
# only what the editor integration finds by itself can run. $1 names the test in the message.
remove_ghostline_from_path() {
  local clean_path="" dir
  local -a path_dirs
  IFS=: read -r -a path_dirs <<<"$PATH"
  for dir in "${path_dirs[@]}"; do
    [[ -n "$dir" && ! -x "$dir/ghostline" ]] && clean_path="${clean_path:+$clean_path:}$dir"
  done
  export PATH="$clean_path"
  if command -v ghostline >/dev/null; then
    echo "$1: ghostline is still on PATH: $(command -v ghostline)" >&2
    exit 1
  fi
}
