// Opening a plan's files: never through a link, never blocking on a FIFO (a FIFO planted in a plan would hang
// the reader), regular files only.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace arvc {

struct RegularFile {
  int fd = -1;
  struct stat st {};
  explicit RegularFile(const std::string &path) : fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) {
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
      close(fd);
      fd = -1;
      errno = EINVAL;
    }
  }
  RegularFile(const RegularFile &) = delete;
  RegularFile &operator=(const RegularFile &) = delete;
  ~RegularFile() {
    if (fd >= 0) close(fd);
  }
  explicit operator bool() const { return fd >= 0; }
};

}  // namespace arvc
