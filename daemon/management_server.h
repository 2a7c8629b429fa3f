#pragma once
// ManagementServer: the listener of the management service (management_service.h).
// Owned by main(), which starts it after the ModelManager and the ConfigReloader and
// shuts it down before them.
//
// Who may call (docs/security.md): on a Unix socket the daemon accepts connections
// itself (an accept thread) and hands only those of allowed peers (SO_PEERCRED uid or
// group, see Authenticator::AllowsUnixPeer) to gRPC; a token is optional there. Over
// TCP every call needs a token with the management scope unless
// server.auth.management is none, and the listener uses the TLS credentials it is given.

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <thread>

#include "daemon/auth.h"
#include "daemon/management_service.h"

namespace splitlearnd {

class ManagementServer {
 public:
  // `auth` must outlive the server.
  ManagementServer(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info, const Authenticator* auth);
  ~ManagementServer();

  // "unix:/path" or "host:port". A Unix socket is made group-writable (0660) so
  // members of the daemon's group can use splitlearnctl; the peer check decides who
  // actually may. `tcp_credentials`: for a TCP address (null: plaintext).
  Status Start(const std::string& address, std::shared_ptr<grpc::ServerCredentials> tcp_credentials = nullptr);
  const std::string& bound_address() const { return bound_address_; }
  void Shutdown();

 private:
  Status ListenUnix(const std::string& address, const std::string& path);
  // The accept thread of a Unix socket: checks each peer, hands good ones to gRPC.
  void AcceptLoop();

  ManagementServiceImpl service_;
  const Authenticator* auth_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::string bound_address_;
  std::string socket_path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // an eventfd: written to stop the accept thread
  std::thread accept_thread_;
};

}  // namespace splitlearnd
