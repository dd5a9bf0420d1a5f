# Run by cmake --install (CMakeLists.txt): the runtime's link lines for the
# installed xentcc (xentcc_rt.link, and xentcc_rt_mpi.link when MPI was
# found), each one's first line (the archive) replaced by the installed
# archive under the prefix given to cmake --install.
foreach(variant xentcc_rt xentcc_rt_mpi)
  if(NOT EXISTS "${XENTCC_BUILD_LIB}/${variant}.link")
    continue()
  endif()
  file(STRINGS "${XENTCC_BUILD_LIB}/${variant}.link" lines)
  list(POP_FRONT lines archive)
  list(PREPEND lines "${CMAKE_INSTALL_PREFIX}/lib/xentcc/lib${variant}.a")
  list(JOIN lines "\n" link)
  set(out "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/lib/xentcc/${variant}.link")
  message(STATUS "Installing: ${out}")
  file(WRITE "${out}" "${link}\n")
endforeach()
