#include "daemon/management_server.h"

#include <grpcpp/server_builder.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "daemon/server.h"

namespace splitlearnd {

ManagementServer::ManagementServer(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info,
                                   const Authenticator* auth)
    : service_(manager, reloader, std::move(info), auth), auth_(auth) {}

ManagementServer::~ManagementServer() { Shutdown(); }

Status ManagementServer::ListenUnix(const std::string& address, const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Unavailable("cannot listen on " + address + ": the path is empty or longer than " +
                       std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());  // a stale socket
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Unavailable("cannot listen on " + address + ": " + std::strerror(errno));
  // Not reachable by anyone until chmod below: bind under a tight umask.
  const mode_t old_mask = umask(0177);
  const int bound = bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  umask(old_mask);
  if (bound != 0) return Unavailable("cannot listen on " + address + ": " + std::strerror(bind_errno));
  socket_path_ = path;
  if (chmod(path.c_str(), 0660) != 0) spdlog::warn("cannot chmod {}: {}", path, std::strerror(errno));
  if (listen(listen_fd_, 64) != 0) return Unavailable("cannot listen on " + address + ": " + std::strerror(errno));
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return Internal(std::string("eventfd: ") + std::strerror(errno));
  return Status::Ok();
}

Status ManagementServer::Start(const std::string& address, std::shared_ptr<grpc::ServerCredentials> tcp_credentials) {
  const bool unix_socket = address.rfind("unix:", 0) == 0;
  grpc::ServerBuilder builder;
  int port = 0;
  if (unix_socket) {
    std::string socket_path = address.substr(5);
    if (socket_path.rfind("//", 0) == 0) socket_path = socket_path.substr(2);
    const auto dir = std::filesystem::path(socket_path).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::is_directory(dir, ec)) {
      return Unavailable("cannot listen on " + address + ": directory " + dir.string() + " does not exist");
    }
    if (auto s = ListenUnix(address, socket_path); !s.ok()) {
      Shutdown();
      return s;
    }
    // The daemon accepts; gRPC gets only the connections of allowed peers.
    acceptor_ = builder.experimental().AddExternalConnectionAcceptor(
        grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, grpc::InsecureServerCredentials());
    service_.set_transport(Transport::kCheckedUnixPeer);
  } else {
    builder.AddListeningPort(address, tcp_credentials ? tcp_credentials : grpc::InsecureServerCredentials(), &port);
    service_.set_transport(Transport::kNetwork);
    // Reflection would answer without a token.
    if (auth_->policy()->config.management == AuthMode::kToken) {
      builder.SetOption(WithoutReflection());
    }
  }
  builder.RegisterService(&service_);
  // A few threads are plenty; LoadModel and ReloadConfig may block one each.
  grpc::ResourceQuota quota("splitlearnd-management");
  quota.SetMaxThreads(8);
  builder.SetResourceQuota(quota);
  server_ = builder.BuildAndStart();
  if (!server_) {
    Shutdown();
    return Unavailable("cannot listen on " + address);
  }
  if (unix_socket) {
    bound_address_ = address;
    accept_thread_ = std::thread([this] { AcceptLoop(); });
    spdlog::info("management socket {}: peers allowed: {}", socket_path_, auth_->policy()->unix_peers.description);
  } else {
    if (port == 0) {
      server_.reset();
      return Unavailable("cannot listen on " + address);
    }
    bound_address_ = address.substr(0, address.rfind(':')) + ":" + std::to_string(port);
  }
  service_.set_management_address(bound_address_);
  return Status::Ok();
}

void ManagementServer::AcceptLoop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (true) {
    fds[0].revents = fds[1].revents = 0;
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("management socket: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        spdlog::warn("management socket: accept: {}", std::strerror(errno));
        poll(&fds[1], 1, 100);  // back off, but wake for shutdown
      }
      continue;  // EAGAIN, EINTR, ECONNABORTED: nothing to accept
    }
    ucred peer{};
    socklen_t len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) {
      spdlog::warn("management socket: refused a connection: cannot read the peer's credentials: {}",
                   std::strerror(errno));
      close(fd);
      continue;
    }
    if (!auth_->AllowsUnixPeer(peer.uid, peer.gid)) {
      // 65534: a user outside the daemon's user namespace (systemd's PrivateUsers=yes maps
      // only root and the unit's own user and group).
      spdlog::warn("management socket: refused a connection from uid {} (gid {}, pid {}): not in "
                   "server.auth.management_unix_uids nor in a group of server.auth.management_unix_groups{}",
                   peer.uid, peer.gid, peer.pid,
                   peer.uid == 65534 ? " (uid 65534: a user the daemon's user namespace does not map; see "
                                       "docs/security.md)"
                                     : "");
      close(fd);
      continue;
    }
    spdlog::debug("management socket: connection from uid {} (pid {})", peer.uid, peer.pid);
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters params;
    params.listener_fd = listen_fd_;
    params.fd = fd;  // gRPC owns it now
    acceptor_->HandleNewConnection(&params);
  }
}

void ManagementServer::Shutdown() {
  if (accept_thread_.joinable()) {
    const uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof one) < 0) spdlog::warn("management socket: cannot wake the accept thread");
    accept_thread_.join();
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
    if (!socket_path_.empty()) unlink(socket_path_.c_str());
  }
  if (wake_fd_ >= 0) {
    close(wake_fd_);
    wake_fd_ = -1;
  }
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
    server_.reset();
  }
  acceptor_.reset();
}

}  // namespace splitlearnd
