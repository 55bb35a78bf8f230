# ARVC_VERSION_STRING: the package version, read from arvc/version.py (its one definition).
file(STRINGS ${CMAKE_CURRENT_LIST_DIR}/../arvc/version.py _arvc_version_line REGEX "^__version__")
string(REGEX REPLACE ".*\"([^\"]+)\".*" "\\1" ARVC_VERSION_STRING "${_arvc_version_line}")
