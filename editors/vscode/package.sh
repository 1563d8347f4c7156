#!/usr/bin/env bash
# Packages the VS Code extension with a bundled server, for one platform:
#
#   editors/vscode/package.sh SERVER_DIR VSCODE_TARGET OUT.vsix
#
# SERVER_DIR holds bin/ghostline (bin/ghostline.exe for win32-* targets) and maybe lib/ (the
# shared libraries of a portable build, found through the binary's rpath $ORIGIN/../lib).
# VSCODE_TARGET is a VS Code platform: linux-x64, linux-arm64, darwin-arm64, darwin-x64,
# win32-x64, ... The .vsix holds SERVER_DIR as extension/server/, which the extension starts
# when ghostline.path is not set. For example, from a source checkout:
#
#   cargo build --release
#   mkdir -p /tmp/server/bin && cp target/release/ghostline /tmp/server/bin/
#   editors/vscode/package.sh /tmp/server linux-x64 ghostline-linux-x64.vsix
#
# Everything happens in a temporary staging copy of editors/vscode: the source tree gets no
# server/, node_modules/ or out/. vsce runs the package's vscode:prepublish script (tsc checks
# the types, esbuild bundles the extension with vscode-languageclient into out/extension.js),
# and .vscodeignore lets only out/, package.json, README.md and server/ into the .vsix. Needs
# npm and Node 20+ (@vscode/vsce 4 declares Node 22, and packs with Node 20 and 24 alike);
# reaches only the npm registry (npm ci of package-lock.json). Fails if the packaged server
# lost its executable bit, or if node_modules/ got into the .vsix.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 SERVER_DIR VSCODE_TARGET OUT.vsix" >&2
  exit 2
fi
server_dir=$1
target=$2
out=$3
extension_dir=$(cd "$(dirname "$0")" && pwd)

exe=ghostline
[[ $target == win32-* ]] && exe=ghostline.exe
if [[ ! -f "$server_dir/bin/$exe" ]]; then
  echo "package.sh: $server_dir/bin/$exe is missing (SERVER_DIR must hold bin/$exe and maybe lib/)" >&2
  exit 2
fi
if [[ $target != win32-* && ! -x "$server_dir/bin/$exe" ]]; then
  echo "package.sh: $server_dir/bin/$exe is not executable" >&2
  exit 2
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ((node_major < 20)); then
  echo "package.sh: needs Node 20 or newer on PATH, found $(node --version 2>/dev/null || echo none)" >&2
  exit 2
fi
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

staging=$(mktemp -d "${TMPDIR:-/tmp}/ghostline-vsix.XXXXXX")
trap 'rm -rf "$staging"' EXIT

cp -R "$extension_dir/src" "$extension_dir/package.json" "$extension_dir/package-lock.json" \
  "$extension_dir/tsconfig.json" "$extension_dir/.vscodeignore" "$extension_dir/README.md" "$staging/"
# -L: a portable build's lib/ may hold symbolic links (libfoo.so -> libfoo.so.1); a .vsix
# cannot, so each becomes a file. -p keeps the executable bits.
mkdir -p "$staging/server"
cp -RLp "$server_dir/." "$staging/server/"

cd "$staging"
# The package has no repository to resolve README.md's relative image against.
sed -i.orig '/screenshot.png/d' README.md && rm -f README.md.orig
npm ci --loglevel=error --no-audit --no-fund >/dev/null
npx --no-install vsce package --no-dependencies --target "$target" --allow-missing-repository --skip-license \
  -o "$out" >/dev/null

# What VS Code unpacks: each entry's unix mode is in the high 16 bits of its external
# attributes (yauzl is vsce's own zip reader).
node - "$out" "extension/server/bin/$exe" "$target" <<'EOF'
const yauzl = require('yauzl');
const [vsix, entryName, target] = process.argv.slice(2);
yauzl.open(vsix, { lazyEntries: true }, (err, zip) => {
  if (err) throw err;
  let found = false;
  let files = 0;
  zip.on('entry', (entry) => {
    files++;
    if (entry.fileName.startsWith('extension/node_modules/')) {
      console.error(`package.sh: ${entry.fileName} is in ${vsix}: the extension is bundled, node_modules is not shipped`);
      process.exit(1);
    }
    if (entry.fileName === entryName) {
      found = true;
      const mode = (entry.externalFileAttributes >>> 16) & 0o777;
      if (!target.startsWith('win32-') && (mode & 0o111) === 0) {
        console.error(`package.sh: ${entryName} is in ${vsix} without its executable bit (mode ${mode.toString(8)})`);
        process.exit(1);
      }
    }
    zip.readEntry();
  });
  zip.on('end', () => {
    if (!found) {
      console.error(`package.sh: ${entryName} is missing from ${vsix}`);
      process.exit(1);
    }
    console.log(`package.sh: ${files} files in ${vsix}`);
  });
  zip.readEntry();
});
EOF
echo "package.sh: $out ($target, server from $server_dir)"
