"""docs/deploy: every YAML and JSON file parses, and the settings the README relies on
are really there (probes, rolling update, grace periods, Envoy's gRPC health checks).
The config inside the ConfigMap is checked by splitlearnd --check-config itself."""
import glob
import json
import os
import subprocess
import tempfile
import unittest

import yaml

from splitlearnd_launcher import SOURCE_DIR, SPLITLEARND_BIN

DEPLOY = os.path.join(SOURCE_DIR, "docs", "deploy")


def load_yaml(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


class DeployFilesTest(unittest.TestCase):
    def test_every_file_parses(self):
        files = sorted(glob.glob(os.path.join(DEPLOY, "*.yaml")) + glob.glob(os.path.join(DEPLOY, "*.yml")) +
                       glob.glob(os.path.join(DEPLOY, "*.json")))
        self.assertGreaterEqual(len(files), 3, files)
        for path in files:
            with self.subTest(file=os.path.basename(path)), open(path) as f:
                if path.endswith(".json"):
                    json.load(f)
                else:
                    docs = [d for d in yaml.safe_load_all(f) if d is not None]
                    self.assertTrue(docs)
                    for d in docs:
                        self.assertIsInstance(d, dict)

    def kube(self):
        return {d["kind"]: d for d in load_yaml("kubernetes.yaml")}

    def test_kubernetes_manifest(self):
        kinds = self.kube()
        self.assertLessEqual({"ConfigMap", "Deployment", "Service"}, set(kinds))
        for d in kinds.values():
            self.assertIn("apiVersion", d)
            self.assertIn("name", d["metadata"])
        dep = kinds["Deployment"]
        self.assertEqual(dep["spec"]["strategy"]["type"], "RollingUpdate")
        self.assertEqual(dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            with self.subTest(probe=probe):
                self.assertEqual(container[probe]["grpc"]["port"], grpc_port)
                self.assertEqual(container[probe]["grpc"]["service"], "")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(dep["spec"]["selector"]["matchLabels"], labels)
        svc = kinds["Service"]
        self.assertEqual(svc["spec"]["clusterIP"], "None")  # headless: one record per pod
        self.assertEqual(svc["spec"]["selector"], labels)

        # The config in the ConfigMap, as mounted, and the pod's grace period.
        cm = kinds["ConfigMap"]
        config_text = cm["data"]["config.yaml"]
        config = yaml.safe_load(config_text)
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        config_arg = container["args"][container["args"].index("--config") + 1]
        self.assertEqual(os.path.dirname(config_arg), mount["mountPath"])
        self.assertIn(os.path.basename(config_arg), cm["data"])
        server = config["server"]
        self.assertGreater(pod["terminationGracePeriodSeconds"], server["drain_grace_s"] + server["drain_timeout_s"])
        self.assertTrue(server["listen"].endswith(f":{grpc_port}"))
        # Liveness must outlast a drain, or Kubernetes kills a draining pod.
        live = container["livenessProbe"]
        self.assertGreater(live["periodSeconds"] * live["failureThreshold"],
                           server["drain_grace_s"] + server["drain_timeout_s"])

    @unittest.skipUnless(SPLITLEARND_BIN, "SPLITLEARND_BIN not set (run through ctest)")
    def test_configmap_config_is_valid(self):
        config_text = self.kube()["ConfigMap"]["data"]["config.yaml"]
        config = yaml.safe_load(config_text)
        with tempfile.TemporaryDirectory() as d:
            # The model files live on a volume in the cluster; stand-ins here, since the
            # check wants the files to exist.
            config["model_root"] = d
            for m in config["models"]:
                open(os.path.join(d, m["path"]), "wb").close()
            path = os.path.join(d, "config.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(config, f)
            r = subprocess.run([SPLITLEARND_BIN, "--check-config", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_envoy_config(self):
        (envoy,) = load_yaml("envoy.yaml")
        (cluster,) = envoy["static_resources"]["clusters"]
        self.assertEqual(cluster["lb_policy"], "ROUND_ROBIN")
        (check,) = cluster["health_checks"]
        self.assertEqual(check["grpc_health_check"]["service_name"], "")
        http2 = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        self.assertIn("http2_protocol_options", http2["explicit_http_config"])  # gRPC needs HTTP/2 upstream
        (listener,) = envoy["static_resources"]["listeners"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        self.assertTrue(any(r["route"]["cluster"] == cluster["name"] for r in routes))
        self.assertIn("unavailable", routes[0]["route"]["retry_policy"]["retry_on"])

    def test_client_service_config(self):
        with open(os.path.join(DEPLOY, "grpc-service-config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["loadBalancingConfig"], [{"round_robin": {}}])
        self.assertEqual(config["healthCheckConfig"], {"serviceName": ""})
        retry = config["methodConfig"][0]["retryPolicy"]
        self.assertEqual(retry["retryableStatusCodes"], ["UNAVAILABLE"])


if __name__ == "__main__":
    unittest.main()
