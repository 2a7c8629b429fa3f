#include "daemon/tls.h"

#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "common/files.h"

namespace splitlearnd {
namespace {

constexpr size_t kMaxPemBytes = 1 << 20;
constexpr const char* kIdentityFile = "identity.pem";
constexpr const char* kClientCaFile = "client-ca.pem";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

// The reason of the last OpenSSL error, and the queue cleared.
std::string OpenSslError() {
  const unsigned long e = ERR_peek_last_error();
  const char* reason = e ? ERR_reason_error_string(e) : nullptr;
  ERR_clear_error();
  return reason ? reason : "unknown error";
}

StatusOr<std::string> ReadPem(const std::string& key, const std::string& path) {
  auto text = ReadWholeFile(key, path);
  if (text.ok() && text->size() > kMaxPemBytes) return InvalidArgument(key + ": " + path + " is larger than 1 MiB");
  return text;
}

// Every certificate in `pem`; at least one.
StatusOr<std::vector<X509Ptr>> ParseCertificates(const std::string& key, const std::string& path,
                                                 const std::string& pem) {
  ERR_clear_error();
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.emplace_back(x);
  const unsigned long e = ERR_peek_last_error();
  const bool at_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
  if (e && !at_end) {
    return InvalidArgument(key + ": " + path + ": certificate " + std::to_string(certs.size() + 1) +
                           " does not parse: " + OpenSslError());
  }
  ERR_clear_error();
  if (certs.empty()) return InvalidArgument(key + ": " + path + ": no PEM certificate found");
  return certs;
}

std::string Pem(const std::vector<X509Ptr>& certs) {
  BioPtr out(BIO_new(BIO_s_mem()));
  for (const auto& c : certs) PEM_write_bio_X509(out.get(), c.get());
  char* data = nullptr;
  const long n = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string Subject(X509* x) {
  char buf[512];
  X509_NAME_oneline(X509_get_subject_name(x), buf, sizeof buf);
  return buf;
}

std::string Time(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// Refuses encrypted keys instead of prompting for a passphrase.
int NoPassphrase(char*, int, int, void*) { return -1; }

// gRPC's file watcher reads the key and the chain one after the other and retries when
// a file's mtime (in whole seconds) changed meanwhile. The new file gets an mtime later
// than the old one's, so a swap between the two reads is always noticed.
Status WritePrivate(const std::string& folder, const std::string& name, const std::string& data) {
  return WriteFileAtomicallyNewerMtime(folder + "/" + name, data, 0600);
}

StatusOr<std::string> MakePrivateFolder() {
  if (const char* runtime = std::getenv("RUNTIME_DIRECTORY"); runtime && *runtime) {
    std::string first(runtime);
    first = first.substr(0, first.find(':'));  // several RuntimeDirectory= entries are ':'-separated
    const std::string folder = first + "/tls";
    if (mkdir(folder.c_str(), 0700) != 0 && errno != EEXIST) {
      return Internal("cannot create " + folder + ": " + std::strerror(errno));
    }
    struct stat st {};
    if (lstat(folder.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
      return Internal(folder + " is not a folder of the daemon's user");
    }
    if (chmod(folder.c_str(), 0700) != 0) return Internal("cannot chmod " + folder + ": " + std::strerror(errno));
    return folder;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/splitlearnd-tls-XXXXXX";
  if (!mkdtemp(pattern.data())) return Internal("cannot create a folder for TLS files: " + std::string(std::strerror(errno)));
  return pattern;
}

}  // namespace

StatusOr<TlsMaterial> LoadTlsMaterial(const TlsConfig& tls, std::vector<std::string>* warnings) {
  TlsMaterial m;
  auto cert_text = ReadPem("server.tls.cert_file", tls.cert_file);
  if (!cert_text.ok()) return cert_text.status();
  auto chain = ParseCertificates("server.tls.cert_file", tls.cert_file, *cert_text);
  if (!chain.ok()) return chain.status();

  auto key_text = ReadPem("server.tls.key_file", tls.key_file);
  if (!key_text.ok()) return key_text.status();
  ERR_clear_error();
  BioPtr key_bio(BIO_new_mem_buf(key_text->data(), static_cast<int>(key_text->size())));
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  if (!key) {
    return InvalidArgument("server.tls.key_file: " + tls.key_file +
                           ": no usable PEM private key (encrypted keys are not supported): " + OpenSslError());
  }
  X509* leaf = chain->front().get();
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return InvalidArgument("server.tls.key_file: " + tls.key_file + " does not match the certificate in " +
                           tls.cert_file + " (" + Subject(leaf) + ")");
  }
  BioPtr out(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PrivateKey(out.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Internal("server.tls.key_file: cannot encode the key: " + OpenSslError());
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(out.get(), &data);
  m.identity_pem.assign(data, static_cast<size_t>(n));
  m.identity_pem += Pem(*chain);
  OPENSSL_cleanse(key_text->data(), key_text->size());

  const std::string not_after = Time(X509_get0_notAfter(leaf));
  if (warnings) {
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
      warnings->push_back("server.tls.cert_file: " + tls.cert_file + ": the certificate expired on " + not_after);
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
      warnings->push_back("server.tls.cert_file: " + tls.cert_file + ": the certificate is valid only from " +
                          Time(X509_get0_notBefore(leaf)));
    }
  }
  m.summary = "certificate " + Subject(leaf) + ", valid until " + not_after;

  if (!tls.client_ca_file.empty()) {
    auto ca_text = ReadPem("server.tls.client_ca_file", tls.client_ca_file);
    if (!ca_text.ok()) return ca_text.status();
    auto cas = ParseCertificates("server.tls.client_ca_file", tls.client_ca_file, *ca_text);
    if (!cas.ok()) return cas.status();
    m.client_ca_pem = Pem(*cas);
    m.summary += "; client CA " + Subject(cas->front().get()) +
                 (cas->size() > 1 ? " and " + std::to_string(cas->size() - 1) + " more" : "");
  }
  return m;
}

StatusOr<std::unique_ptr<TlsServer>> TlsServer::Start(const TlsConfig& tls, std::vector<std::string>* warnings) {
  auto material = LoadTlsMaterial(tls, warnings);
  if (!material.ok()) return material.status();
  auto folder = MakePrivateFolder();
  if (!folder.ok()) return folder.status();
  std::unique_ptr<TlsServer> server(new TlsServer());
  server->started_with_ = tls;
  server->folder_ = *folder;
  if (auto s = server->Install(*material); !s.ok()) return s.status();

  const std::string identity = server->folder_ + "/" + kIdentityFile;
  const std::string ca = tls.client_ca_file.empty() ? "" : server->folder_ + "/" + kClientCaFile;
  server->provider_ =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(identity, identity, ca, 1);
  grpc::experimental::TlsServerCredentialsOptions options(server->provider_);
  options.watch_identity_key_cert_pairs();
  if (tls.client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(tls.require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                          : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  server->credentials_ = grpc::experimental::TlsServerCredentials(options);
  if (!server->credentials_) return Internal("cannot create TLS server credentials");
  return server;
}

TlsServer::~TlsServer() {
  credentials_.reset();
  provider_.reset();
  if (folder_.empty()) return;
  for (const char* name : {kIdentityFile, kClientCaFile}) {
    unlink((folder_ + "/" + name).c_str());
    unlink((folder_ + "/" + name + ".tmp").c_str());
  }
  rmdir(folder_.c_str());
}

StatusOr<TlsMaterial> TlsServer::Prepare(const TlsConfig& next, std::vector<std::string>* warnings) const {
  TlsConfig effective = next;
  if (started_with_.client_ca_file.empty() || next.client_ca_file.empty()) {
    // A client CA cannot be added or removed while serving (the request type is fixed):
    // keep serving what started.
    effective.client_ca_file = "";
  }
  auto m = LoadTlsMaterial(effective, warnings);
  if (!m.ok()) return m.status();
  if (!started_with_.client_ca_file.empty() && effective.client_ca_file.empty()) {
    m->client_ca_pem = current_.client_ca_pem;
  }
  return m;
}

StatusOr<bool> TlsServer::Install(const TlsMaterial& material) {
  if (material == current_ && !current_.identity_pem.empty()) return false;
  // The CA first: a client certificate signed by the new CA may come with the new
  // server certificate.
  if (!material.client_ca_pem.empty() && material.client_ca_pem != current_.client_ca_pem) {
    if (auto s = WritePrivate(folder_, kClientCaFile, material.client_ca_pem); !s.ok()) return s;
  }
  if (material.identity_pem != current_.identity_pem) {
    if (auto s = WritePrivate(folder_, kIdentityFile, material.identity_pem); !s.ok()) return s;
  }
  current_ = material;
  return true;
}

}  // namespace splitlearnd
