#!/usr/bin/env bash
# Vulkan headers new enough for llama-cpp-sys-2 0.1.161's llama.cpp, on a
# Debian 12 machine. Its libvulkan-dev (1.3.239) lacks VK_EXT_layer_settings
# (`vk::LayerSettingEXT`), which ggml-vulkan.cpp uses; Debian 13's package
# (1.4.309) has it. This fetches that package from Debian's archive (no
# system change: apt runs on its own lists under target/) and unpacks its
# headers into target/vulkan-headers/include. Build with:
#
#   bash tools/vulkan/headers.sh
#   CPLUS_INCLUDE_PATH=$PWD/target/vulkan-headers/include cargo build --features vulkan
#
# (gcc searches CPLUS_INCLUDE_PATH before /usr/include; llama-cpp-sys-2's
# cmake call does not pass CXXFLAGS through.) The system's loader
# (libvulkan1) and glslc (`apt-get install libvulkan-dev glslc`) are used
# as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=target/vulkan-headers
[ -f "$OUT/include/vulkan/vulkan.hpp" ] && grep -q LayerSettingEXT "$OUT/include/vulkan/vulkan_structs.hpp" && {
    echo "$OUT/include is ready"
    exit 0
}
WORK="$PWD/target/vulkan-apt"
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/sources"
cat >"$WORK/sources/trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
APT=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$WORK/sources"
     -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache=$WORK/cache"
     -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update >/dev/null
(cd "$WORK" && apt-get "${APT[@]}" download libvulkan-dev)
rm -rf "$WORK/unpacked" "$OUT"
dpkg-deb -x "$WORK"/libvulkan-dev_*.deb "$WORK/unpacked"
mkdir -p "$OUT"
cp -r "$WORK/unpacked/usr/include" "$OUT/"
echo "headers $(basename "$WORK"/libvulkan-dev_*.deb .deb) in $OUT/include"
