// Temporaries that name their owner, as arvc/atomic.py names them, so that a temporary left by a killed
// arvc_stream (SIGKILL, a power cut) is removed by the next run that writes beside it, and only when its owner
// is provably gone. The name and the rule are arvc/atomic.py's (its docstring is the spec):
//
//     .<target name>.arvc-<host>-<boot>-<pid>-<start>-<random><kind>
//
// Both languages make and judge the same names, so either cleans what the other left.
#pragma once

#include <string>

namespace arvc_tool {

// "arvc-<host>-<boot>-<pid>-<start>" of this process
std::string owner_tag();

// ".<target name (first 100 bytes)>.<owner tag>-<8 random [a-z0-9]><kind>"
std::string temp_name(const std::string &target_name, const std::string &kind);

// Removes the files of `kind` in `dir` whose owner is provably gone (the same host and boot and no process with
// that pid and start time, or the same host and an earlier boot); names of another host or an unknown form stay.
void clean_stale(const std::string &dir, const std::string &kind);

}  // namespace arvc_tool
