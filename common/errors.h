// The project's error hierarchy. Every error that reaches a user carries a one-line,
// self-explanatory message (what failed and, where it helps, what to do about it).
// Input from a file or the network may end that command or connection with one of
// these, never the process.
#pragma once
#include <stdexcept>
#include <string>

namespace fedtl {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad job/site configuration or command-line values (unknown key, impossible value).
class ConfigError : public Error { using Error::Error; };
// Missing, truncated or corrupt dataset/image files.
class DataError : public Error { using Error::Error; };
// Model loading, shape mismatch, TorchScript failures (c10::Error is re-thrown as this).
class ModelError : public Error { using Error::Error; };
// Malformed, oversized or unexpected protocol frames/messages; peer spoke another version.
class ProtocolError : public Error { using Error::Error; };
// Connection closed, timed out or failed underneath the protocol.
class TransportError : public Error { using Error::Error; };
// A timeout specifically (a subclass so callers can treat deadlines differently).
class TimeoutError : public TransportError { using TransportError::TransportError; };
// The peer is not who it must be (its certificate was refused: another name, role or CA):
// retrying cannot help.
class PeerIdentityError : public TransportError { using TransportError::TransportError; };
// A site refused the job under its policy (or the coordinator refused the site).
class PolicyError : public Error { using Error::Error; };
// File-system failures writing outputs/checkpoints.
class IoError : public Error { using Error::Error; };

}  // namespace fedtl
