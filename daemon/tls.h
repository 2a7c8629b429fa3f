// TLS for the daemon's TCP listeners, with certificates re-read on reload.
//
// gRPC serves what a FileWatcherCertificateProvider reads (once a second) from files in
// a private folder the daemon owns: $RUNTIME_DIRECTORY/tls under systemd, else a fresh
// 0700 folder under $TMPDIR or /tmp; it is removed when the daemon exits. The
// configured files are never served directly: at start and on every reload they are
// read and checked with OpenSSL (the chain parses, the key matches the leaf, the client
// CA parses), and only material that passes is written into the private folder, each
// file atomically (temporary file + rename). The key and the chain go into one file,
// so gRPC can never pick up a new certificate with the old key. A reload with bad
// files therefore changes nothing: the previous certificate keeps serving.
//
// Owned by main(). Prepare() may run on any thread; Install() runs on the reloader's
// thread (one at a time).
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"

namespace splitlearnd {

// Checked PEM material, normalized (re-encoded by OpenSSL).
struct TlsMaterial {
  std::string identity_pem;   // the private key, then the certificate chain
  std::string client_ca_pem;  // empty without client_ca_file
  std::string summary;        // "subject CN=…, valid until …" for logs

  bool operator==(const TlsMaterial& o) const {
    return identity_pem == o.identity_pem && client_ca_pem == o.client_ca_pem;
  }
};

// Reads and checks the files `tls` names. Errors name the key and file; `warnings`
// gets notes that do not refuse it (an expired or not yet valid certificate).
StatusOr<TlsMaterial> LoadTlsMaterial(const TlsConfig& tls, std::vector<std::string>* warnings);

class TlsServer {
 public:
  // Checks the files, makes the private folder, writes the material and builds the
  // credentials. Fails (and leaves nothing behind) when any file is bad.
  static StatusOr<std::unique_ptr<TlsServer>> Start(const TlsConfig& tls, std::vector<std::string>* warnings);
  ~TlsServer();  // removes the private folder

  std::shared_ptr<grpc::ServerCredentials> credentials() const { return credentials_; }
  // The settings the credentials were built with (client CA, request type): changing
  // those needs a restart; the files they name are re-read.
  const TlsConfig& started_with() const { return started_with_; }

  // Reads and checks the files of `next`, as far as a running server can take them:
  // cert and key always, the client CA only when the server started with one.
  StatusOr<TlsMaterial> Prepare(const TlsConfig& next, std::vector<std::string>* warnings) const;
  // Writes `material` for gRPC to pick up (within about a second). True when it
  // differs from what was served.
  StatusOr<bool> Install(const TlsMaterial& material);
  const std::string& folder() const { return folder_; }

 private:
  TlsServer() = default;

  TlsConfig started_with_;
  std::string folder_;
  bool remove_folder_ = false;
  TlsMaterial current_;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
};

}  // namespace splitlearnd
