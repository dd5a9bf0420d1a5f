# Run by cmake --install (CMakeLists.txt): the runtime's link line for the
# installed xentcc, its first line (the archive) replaced by the installed
# archive under the prefix given to cmake --install.
file(STRINGS "${XENTCC_BUILD_LIB}/xentcc_rt.link" lines)
list(POP_FRONT lines archive)
list(PREPEND lines "${CMAKE_INSTALL_PREFIX}/lib/xentcc/libxentcc_rt.a")
list(JOIN lines "\n" link)
set(out "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/lib/xentcc/xentcc_rt.link")
message(STATUS "Installing: ${out}")
file(WRITE "${out}" "${link}\n")
