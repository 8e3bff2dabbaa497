-- Argo CD health check for Kiln's ImageBuild and CacheWarm (kiln.dev/v1alpha1): install it as
-- resource.customizations.health.kiln.dev_ImageBuild and .kiln.dev_CacheWarm in argocd-cm (see
-- the chart's README). Argo CD runs it with Lua 5.1 and the object as the global `obj`.
--   Healthy      Ready=True: the image is pushed (a CacheWarm: its cache holds the images, even
--                while a refresh runs)
--   Suspended    Cancelled (spec.cancel): stopped on purpose; set spec.cancel to false to build
--   Degraded     Stalled=True: failed for good (the reason and message say why); it stays so
--                until the spec changes or a re-run is requested (spec.rerun)
--   Progressing  anything else: not yet seen by the operator, queued, pending, building,
--                waiting to retry
local hs = { status = "Progressing", message = "Waiting for the Kiln operator" }

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end

if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the Kiln operator to observe generation " .. tostring(generation)
  return hs
end

if obj.status.phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = obj.status.message or "Cancelled"
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif ready ~= nil then
  hs.message = describe(ready)
elseif obj.status.phase ~= nil then
  hs.message = obj.status.phase
end
return hs
